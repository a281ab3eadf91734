"""Structured (JSON) logs on stderr. Secrets never reach them: settings hold SecretStr, and
headers are never logged."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    quiet_secret_loggers()


# Third-party loggers that would print secrets: aiosqlite logs SQL parameters (destination
# secrets, event data) at DEBUG; httpx logs request URLs (a Slack webhook URL is a credential).
_SECRET_LOGGERS = {"aiosqlite": "INFO", "httpx": "WARNING", "httpcore": "WARNING", "asyncpg": "INFO"}


def quiet_secret_loggers() -> None:
    for name, level in _SECRET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """Uvicorn's own loggers, in the same JSON shape."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JSONFormatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper()},
            "uvicorn.access": {"level": "WARNING"},
            **{name: {"level": floor} for name, floor in _SECRET_LOGGERS.items()},
        },
    }
