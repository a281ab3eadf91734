"""Plain functions that build Auth0-shaped events and stream bodies."""

from __future__ import annotations

import gzip
import itertools
from typing import Any, Literal

import orjson

_counter = itertools.count(1)


def make_log_id(n: int | None = None) -> str:
    n = next(_counter) if n is None else n
    return f"900202611230000000000000000{n:029d}"


def make_event(**fields: Any) -> dict[str, Any]:
    """A log object as it appears inside a stream envelope's `data`."""
    log_id = fields.pop("log_id", None) or make_log_id()
    event = {
        "date": "2026-11-23T10:00:00.000Z",
        "type": "f",
        "description": "Wrong email or password.",
        "client_id": "client-1",
        "client_name": "Default App",
        "connection": "Username-Password-Authentication",
        "ip": "81.2.69.143",
        "user_id": "auth0|user-1",
        "user_name": "dev@example.com",
        "log_id": log_id,
    }
    event.update(fields)
    return event


def envelope(event: dict[str, Any]) -> dict[str, Any]:
    return {"log_id": event["log_id"], "data": event}


Format = Literal["jsonl", "array", "object"]


def make_stream_body(events: list[dict[str, Any]], fmt: Format = "jsonl", *, gzipped: bool = False) -> bytes:
    """A body as Auth0 sends it: envelopes as JSON Lines, a JSON array or `{"logs": [...]}`."""
    envelopes = [envelope(e) for e in events]
    if fmt == "jsonl":
        body = b"\n".join(orjson.dumps(e) for e in envelopes) + b"\n"
    elif fmt == "array":
        body = orjson.dumps(envelopes)
    else:
        body = orjson.dumps({"logs": envelopes})
    return gzip.compress(body) if gzipped else body
