"""The Custom Webhook log stream body: framing, event shapes and log ids. Pure; no I/O.

Auth0 labels JSON Lines `application/json` too, so the framing is read from the body itself:
a whole JSON array or object, else one JSON document per line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Framing = Literal["jsonl", "array", "object"]
_BOM = b"\xef\xbb\xbf"


class BodyError(ValueError):
    """The body holds nothing that can be stored; the message names the line or offset."""


@dataclass(slots=True)
class StreamEvent:
    log_id: str
    data: dict[str, Any]
    id_generated: bool = False
    encoded: bytes | None = None  # `data` as JSON, once the parser has encoded it
    position: int = 0  # the line (JSON Lines) or item (array) it came from
    raw: bytes | None = None  # the line as sent, kept should the store refuse the event


@dataclass(slots=True)
class Rejected:
    """An input line or item that is not an event; kept verbatim in quarantine."""

    position: int  # 1-based line for JSON Lines, 0-based item index for arrays
    reason: str
    raw: bytes


@dataclass(slots=True)
class ParsedBody:
    framing: Framing
    events: list[StreamEvent] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def received(self) -> int:
        return len(self.events) + len(self.rejected)


def parse_body(body: bytes, max_event_bytes: int) -> ParsedBody:
    """Split a stream body into events and rejected items; raise BodyError if nothing is usable."""
    if body.startswith(_BOM):
        body = b"   " + body[len(_BOM) :]  # blanked, not cut, so positions stay those of the body as sent
    if not body.strip():
        raise BodyError("the body is empty")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        where = f"invalid JSON at line {exc.lineno}, column {exc.colno} (char {exc.pos}): {exc.msg}"
        if b"\n" not in body:
            raise BodyError(where) from None
        # Several lines are read as JSON Lines, which keeps every good line. If none is good and
        # the first is broken JSON, the body was one broken document: say where it breaks.
        parsed = _parse_lines(body, max_event_bytes)
        if not parsed.events and parsed.rejected[0].reason.startswith("invalid JSON"):
            raise BodyError(where) from None
    else:
        parsed = _parse_document(document, max_event_bytes)
    if not parsed.events and parsed.rejected:
        first = parsed.rejected[0]
        where = "line" if parsed.framing == "jsonl" else "item"
        raise BodyError(f"no valid event; {where} {first.position}: {first.reason}")
    return parsed


def _parse_lines(body: bytes, max_event_bytes: int) -> ParsedBody:
    parsed = ParsedBody("jsonl")
    for number, line in enumerate(body.split(b"\n"), start=1):
        line = line.strip()
        if not line:
            continue
        if len(line) > max_event_bytes:
            reason = f"{len(line)} bytes exceeds MAX_EVENT_BYTES ({max_event_bytes})"
            parsed.rejected.append(Rejected(number, reason, line))
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            reason = f"invalid JSON at column {exc.colno}: {exc.msg}"
            parsed.rejected.append(Rejected(number, reason, line))
            continue
        _add_item(parsed, number, item, line, max_event_bytes)
    return parsed


def _parse_document(document: object, max_event_bytes: int) -> ParsedBody:
    if isinstance(document, list):
        parsed, items = ParsedBody("array"), document
    elif isinstance(document, dict):
        parsed = ParsedBody("object")
        logs = document.get("logs") if len(document) == 1 else None
        items = logs if isinstance(logs, list) else [document]
    else:
        raise BodyError(f"the body is a JSON {_kind(document)}; expected an object, an array or JSON Lines")
    for index, item in enumerate(items):
        _add_item(parsed, index, item, None, max_event_bytes)
    return parsed


def _add_item(
    parsed: ParsedBody, position: int, item: object, raw: bytes | None, max_event_bytes: int
) -> None:
    if not isinstance(item, dict):
        reason = f"expected a JSON object, got a JSON {_kind(item)}"
        parsed.rejected.append(Rejected(position, reason, raw or orjson.dumps(item)))
        return
    event = to_event(item)
    event.position, event.raw = position, raw
    try:
        event.encoded = encode(event.data)
    except UnencodableEvent as exc:
        parsed.rejected.append(Rejected(position, str(exc), raw or b""))
        return
    if len(event.encoded) > max_event_bytes:
        reason = f"event exceeds MAX_EVENT_BYTES ({max_event_bytes})"
        parsed.rejected.append(Rejected(position, reason, raw or event.encoded))
        return
    parsed.events.append(event)


class UnencodableEvent(ValueError):
    """An event that cannot be written back as JSON."""


def encode(data: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError:
        # orjson reads 1024 levels of nesting but writes only 255.
        raise UnencodableEvent("nested more than 255 levels deep") from None


def to_event(item: dict[str, Any]) -> StreamEvent:
    """Unwrap the stream envelope `{log_id, data}` or take a bare log (`_id`/`log_id`).

    The id is `log_id`, then `data.log_id`, then `_id`; with none, a hash of the content, flagged.
    """
    inner = item.get("data")
    if isinstance(inner, dict) and "type" not in item and "date" not in item:
        log_id = item.get("log_id") or inner.get("log_id") or inner.get("_id")
        data = inner
    else:
        log_id = item.get("log_id") or item.get("_id")
        data = item
    if isinstance(log_id, str | int) and not isinstance(log_id, bool) and str(log_id).strip():
        return StreamEvent(str(log_id).strip(), data)
    digest = hashlib.sha256(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return StreamEvent(f"sha256:{digest}", data, id_generated=True)


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
