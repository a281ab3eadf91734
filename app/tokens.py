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
from typing import Literal, get_args

from app.config import Settings
from app.files import exclusive_lock, private_dir

Scope = Literal["ingest", "read", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
TOKEN_FILE = "tokens.json"
SETTING_OF = {"ingest": "LOG_STREAM_TOKEN", "read": "API_TOKEN", "admin": "ADMIN_TOKEN"}


@dataclass(frozen=True)
class Tokens:
    ingest: tuple[str, ...]
    read: tuple[str, ...]
    admin: tuple[str, ...]
    generated: dict[str, str] = field(default_factory=dict)  # setting name -> new value, to print once
    path: Path | None = None

    def allows(self, scope: Scope, presented: str | None) -> bool:
        """Whether a raw or `Bearer` token grants `scope`; admin tokens may also read."""
        granted = self.scopes_of(presented)
        return scope in granted or (scope == "read" and "admin" in granted)

    def scopes_of(self, presented: str | None) -> frozenset[Scope]:
        """The scopes whose tokens match a raw or `Bearer` token, compared in constant time."""
        if not presented:
            return frozenset()
        candidates = {presented.strip()}
        scheme, _, rest = presented.partition(" ")
        if scheme.lower() == "bearer":
            candidates.add(rest.strip())
        presented_bytes = [_header_bytes(candidate) for candidate in candidates]
        granted: set[Scope] = set()
        for scope in SCOPES:
            matched = False
            for token in getattr(self, scope):  # no early exit: the time does not say which matched
                for candidate in presented_bytes:
                    matched |= hmac.compare_digest(token.encode(), candidate)
            if matched:
                granted.add(scope)
        return frozenset(granted)


class TokenFileError(ValueError):
    """The kept tokens cannot be read; replacing them would lock out every client that has them."""


def _header_bytes(value: str) -> bytes:
    # The server decodes header bytes as latin-1; the bytes a client sent are the token's UTF-8.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def load_tokens(settings: Settings) -> Tokens:
    """Tokens from the settings, else from the data directory, else newly generated and kept."""
    path = settings.data_dir / TOKEN_FILE
    configured = {
        scope: tuple(s.get_secret_value() for s in getattr(settings, setting.lower()))
        for scope, setting in SETTING_OF.items()
    }
    kept = _read_kept(path)
    generated: dict[str, str] = {}
    if any(not configured[scope] and setting not in kept for scope, setting in SETTING_OF.items()):
        # Processes that share the data directory may all start at once: one generates, the rest read.
        with exclusive_lock(path.with_suffix(".lock")):
            kept = _read_kept(path)
            for scope, setting in SETTING_OF.items():
                if not configured[scope] and setting not in kept:
                    kept[setting] = generated[setting] = secrets.token_urlsafe(32)
            if generated:
                _keep(path, kept)
    values = {scope: configured[scope] or (kept[setting],) for scope, setting in SETTING_OF.items()}
    return Tokens(values["ingest"], values["read"], values["admin"], generated, path)


def _read_kept(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        message = f"{path} cannot be read ({exc}); fix it, or delete it to generate new tokens"
        raise TokenFileError(message) from None
    if not isinstance(kept, dict) or not all(isinstance(v, str) and v for v in kept.values()):
        raise TokenFileError(f"{path} does not hold the tokens; fix it, or delete it to generate new tokens")
    return kept


def _keep(path: Path, tokens: dict[str, str]) -> None:
    private_dir(path.parent)
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a temp file left behind keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as handle:
        json.dump(tokens, handle, indent=2)
    os.replace(temp, path)
