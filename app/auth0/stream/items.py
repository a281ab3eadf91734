"""One line or item of a body: its event, or its rejection."""

from __future__ import annotations

import orjson

from app.auth0.stream.cut import is_one_value
from app.auth0.stream.event import UnencodableEvent, compact, encode, to_event, verbatim
from app.auth0.stream.jsontext import ITEM_ERRORS, invalid_json, kind, loads
from app.auth0.stream.parsed import ParsedBody, Rejected


def add_raw(parsed: ParsedBody, position: int, raw: bytes, item: bool, max_event_bytes: int) -> None:
    """One line, or item of an array cut from the body, as sent: its event, or its rejection."""
    try:
        value = loads(raw)
    except orjson.JSONDecodeError as exc:
        parsed.rejected.append(Rejected(position, invalid_json(exc, " of the item" if item else ""), raw))
        # An item's brackets are those of the array it was cut from; a line has only its own.
        if not exc.msg.startswith(ITEM_ERRORS) or not (item or is_one_value(raw)):
            parsed.broken += 1
        return
    add_item(parsed, position, value, raw, max_event_bytes)


def add_item(
    parsed: ParsedBody, position: int, item: object, raw: bytes | None, max_event_bytes: int
) -> None:
    if not isinstance(item, dict):
        reason = f"expected a JSON object, got a JSON {kind(item)}"
        parsed.rejected.append(Rejected(position, reason, raw or verbatim(item)))
        return
    try:
        event = to_event(item)
        event.encoded = compact(encode(event.data))
    except UnencodableEvent as exc:
        parsed.rejected.append(Rejected(position, str(exc), raw or verbatim(item)))
        return
    if len(event.encoded) > max_event_bytes:
        reason = f"event exceeds MAX_EVENT_BYTES ({max_event_bytes})"
        parsed.rejected.append(Rejected(position, reason, raw or verbatim(item)))
        return
    event.position, event.raw = position, raw
    if raw is None:
        event.item = item
    parsed.events.append(event)


def add_line(parsed: ParsedBody, number: int, line: bytes, max_event_bytes: int) -> None:
    line = line.strip()
    if not line:
        return
    if len(line) > max_event_bytes:
        reason = f"{len(line)} bytes exceeds MAX_EVENT_BYTES ({max_event_bytes})"
        parsed.rejected.append(Rejected(number, reason, line))
        return
    add_raw(parsed, number, line, False, max_event_bytes)
