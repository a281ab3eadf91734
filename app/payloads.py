"""What goes on the wire: request bodies for a destination's payload shape (see PAYLOADS in
destinations), the `webhook-id`, the signing key, and the header values we are given."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from pydantic import SecretStr

from app import slack

Event = tuple[str, dict[str, Any]]  # (log_id, stored data)

SECRET_PREFIX = "whsec_"
MIN_SECRET_CHARS = 16
# A log id sent as it is in `webhook-id`; any other id (a line break, non-ASCII) would break the header.
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:|-]{1,255}")
# Visible ASCII, single spaces inside allowed: what h11 sends without complaint and without surprise.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_VALUE_RULE = "must be visible ASCII characters (spaces only between them), without line breaks"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")  # RFC 9110's token
MAX_HEADERS = 20
# Headers a destination's `headers` may not set: logrelay sends them itself (the signature covers
# webhook-*), or they frame the request or the connection, which is the HTTP client's business.
OWN_HEADERS = frozenset(
    {"content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature"}
)
FRAMING_HEADERS = frozenset(
    {"host", "content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
    | {"te", "trailer", "upgrade", "expect", "proxy-connection"}
)


def render_event(payload: str, log_id: str, data: dict[str, Any]) -> Any:
    """One event in the destination's shape."""
    if payload == "raw":
        return data
    if payload == "mgmt_webhook":
        details = data.get("details")
        details = details if isinstance(details, dict) else {}
        return {
            "date": data.get("date"),
            "request": details.get("request"),
            "response": details.get("response"),
        }
    return data if data.get("log_id") == log_id else {**data, "log_id": log_id}


def render_body(kind: str, payload: str, events: Sequence[Event], as_batch: bool) -> bytes:
    """The POST body: a Slack message, a JSON array (batch) or one JSON object (single)."""
    if kind == "slack":
        return orjson.dumps(slack.render_message(events))
    if as_batch:
        return orjson.dumps([render_event(payload, log_id, data) for log_id, data in events])
    log_id, data = events[0]
    return orjson.dumps(render_event(payload, log_id, data))


def message_id(log_ids: Sequence[str], as_batch: bool) -> str:
    """The `webhook-id`: the log id of a single event, or a digest of a batch's log ids.

    Both are stable across retries of the same rows, so receivers can deduplicate (a replay of the
    same event carries the same id again). A log id that is not plain ASCII is sent as `evt_<digest>`.
    """
    if not as_batch:
        log_id = log_ids[0]
        return log_id if _PLAIN_ID.fullmatch(log_id) else f"evt_{_digest([log_id])}"
    return f"batch_{_digest(log_ids)}"


def _digest(log_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(log_ids).encode(errors="surrogatepass")).hexdigest()[:32]


def signing_key(secret: str) -> bytes:
    """The HMAC key for a signing secret.

    A Standard Webhooks secret (`whsec_` + base64) is decoded as that standard says; any other string
    is used as its UTF-8 bytes. Receivers verify the latter with `Webhook(secret.encode())` or with
    `Webhook("whsec_" + base64(secret))`.
    """
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :].rstrip("=")
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    return secret.encode()


def check_signing_secret(secret: str) -> str:
    """The secret, or ValueError saying what is wrong with it (never quoting it)."""
    try:
        key = signing_key(secret)
    except (binascii.Error, ValueError):
        raise ValueError("a whsec_ signing secret must be base64 after the prefix") from None
    if secret.startswith(SECRET_PREFIX) and len(key) < 16:
        raise ValueError("a whsec_ signing secret must hold at least 16 bytes")
    if len(key) < MIN_SECRET_CHARS:
        raise ValueError(f"the signing secret must be at least {MIN_SECRET_CHARS} characters")
    return secret


def is_header_value(value: str) -> bool:
    return _HEADER_VALUE.fullmatch(value) is not None


def check_header_value(value: str) -> str:
    """A value sent verbatim as a header (Authorization), or ValueError (never quoting it)."""
    if not is_header_value(value):
        raise ValueError(_VALUE_RULE)
    return value


def check_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    """Extra headers sent verbatim with every request (an API key the receiver wants, say), or
    ValueError naming the header at fault, never quoting a value. An empty mapping means none."""
    if not headers:
        return None
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name[:100]!r} is not a header name (letters, digits and !#$%&'*+.^_`|~-)")
        key = name.lower()
        if key == "authorization":
            raise ValueError("Authorization is set by the destination's own authorization field")
        if key in OWN_HEADERS or key in FRAMING_HEADERS:
            raise ValueError(f"{name} is set by logrelay or the HTTP client, not by a destination")
        if key in seen:
            raise ValueError(f"{name} is given twice (header names ignore case)")
        seen.add(key)
        if not isinstance(value, str) or not is_header_value(value):
            raise ValueError(f"the value of {name} {_VALUE_RULE}")
    return headers


def parse_headers(text: str) -> dict[str, str] | None:
    """FORWARD_HEADERS: a JSON object of header names and values, checked as `check_headers` does."""
    try:
        headers = orjson.loads(text)
    except orjson.JSONDecodeError:
        headers = None
    if not isinstance(headers, dict):
        raise ValueError('must be a JSON object of header names and values, such as {"X-Api-Key": "..."}')
    return check_headers(headers)


def secret_setting(check: Callable[[str], object]) -> Callable[[SecretStr | None], SecretStr | None]:
    """A settings validator from a check of the secret's value: ValueError names the setting, and an
    empty value means unset."""

    def validate(value: SecretStr | None) -> SecretStr | None:
        if value:
            check(value.get_secret_value())
        return value

    return validate


check_signing_secret_setting = secret_setting(check_signing_secret)  # FORWARD_SIGNING_SECRET
check_authorization_setting = secret_setting(check_header_value)  # FORWARD_AUTHORIZATION, AUTHORIZATION
check_headers_setting = secret_setting(parse_headers)  # FORWARD_HEADERS
