"""The three tokens: ingest (LOG_STREAM_TOKEN), read (API_TOKEN) and manage (ADMIN_TOKEN).

A token that is not set is generated once, kept in the data directory (mode 0600) and reused.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.config import Settings

Scope = Literal["ingest", "read", "admin"]
TOKEN_FILE = "tokens.json"
_SETTING = {"ingest": "LOG_STREAM_TOKEN", "read": "API_TOKEN", "admin": "ADMIN_TOKEN"}


@dataclass(frozen=True)
class Tokens:
    ingest: tuple[str, ...]
    read: tuple[str, ...]
    admin: tuple[str, ...]
    generated: dict[str, str] = field(default_factory=dict)  # setting name -> new value, to print once
    path: Path | None = None

    def allows(self, scope: Scope, presented: str | None) -> bool:
        """Constant-time match of a raw or `Bearer` token; admin tokens may also read."""
        if not presented:
            return False
        candidates = {presented.strip()}
        scheme, _, rest = presented.partition(" ")
        if scheme.lower() == "bearer":
            candidates.add(rest.strip())
        allowed = getattr(self, scope) + (self.admin if scope == "read" else ())
        matched = False
        for token in allowed:  # no early exit: the time does not depend on which token matched
            for candidate in candidates:
                matched |= hmac.compare_digest(token.encode(), candidate.encode())
        return matched


def load_tokens(settings: Settings) -> Tokens:
    """Tokens from the settings, else from the data directory, else newly generated and kept."""
    path = settings.data_dir / TOKEN_FILE
    kept: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    generated: dict[str, str] = {}
    values: dict[str, tuple[str, ...]] = {}
    for scope, setting in _SETTING.items():
        configured = [s.get_secret_value() for s in getattr(settings, setting.lower())]
        if configured:
            values[scope] = tuple(configured)
            continue
        if setting not in kept:
            kept[setting] = generated[setting] = secrets.token_urlsafe(32)
        values[scope] = (kept[setting],)
    if generated:
        _keep(path, kept)
    return Tokens(values["ingest"], values["read"], values["admin"], generated, path)


def _keep(path: Path, tokens: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(tokens, handle, indent=2)
    os.replace(temp, path)
