"""The Custom Webhook log stream body: framing, event shapes and log ids. Pure; no I/O.

Auth0 labels JSON Lines `application/json` too, so the framing is read from the body itself:
a whole JSON array or object, else one JSON document per line.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Framing = Literal["jsonl", "array", "object"]
_BOM = b"\xef\xbb\xbf"
# Keys of a log event or its envelope: an object with none of them that holds `logs` is a page of logs.
_EVENT_KEYS = frozenset({"log_id", "_id", "data", "type", "date"})
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    item: dict[str, Any] | None = None  # or the array item as sent, envelope and all


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
        document = _loads(body)
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
            item = _loads(line)
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
        logs = document.get("logs") if not document.keys() & _EVENT_KEYS else None
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
        parsed.rejected.append(Rejected(position, reason, raw or verbatim(item)))
        return
    try:
        event = to_event(item)
        event.encoded = encode(event.data)
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


class UnencodableEvent(ValueError):
    """An event that cannot be written back as JSON."""


def encode(data: dict[str, Any], option: int | None = None) -> bytes:
    try:
        return orjson.dumps(data, option=option)
    except TypeError:
        # orjson reads 1024 levels of nesting but writes only 255.
        raise UnencodableEvent("nested more than 255 levels deep") from None


def verbatim(item: object) -> bytes:
    """An item of an array or object body as JSON again, to keep in quarantine."""
    try:
        return orjson.dumps(item)
    except TypeError:
        pass
    try:
        return json.dumps(item).encode()  # no 255-level limit; \u-escapes whatever orjson cannot write
    except RecursionError:
        return b""


def _loads(data: bytes) -> Any:
    """orjson, except for text with a lone UTF-16 surrogate escape (JavaScript writes one for half an
    emoji): JSON allows it, orjson refuses it, and no UTF-8 text can hold it, so it becomes U+FFFD."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "surrogate" not in exc.msg:
            raise
        try:  # strict UTF-8 first: the stdlib would let an encoded surrogate through
            text = data.decode()
            return _replace_surrogates(json.loads(text, parse_constant=_refuse, parse_int=_int))
        except (ValueError, RecursionError):
            raise exc from None


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _int(text: str) -> int | float:
    # As orjson reads them: an integer beyond 64 bits becomes a float.
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)


def to_event(item: dict[str, Any]) -> StreamEvent:
    """Unwrap the stream envelope `{log_id, data}` or take a bare log (`_id`/`log_id`).

    The id is the first usable of `log_id`, `data.log_id` and `_id`; with none, a hash of the
    content, flagged.
    """
    inner = item.get("data")
    candidates: tuple[object, ...]
    if isinstance(inner, dict) and "type" not in item and "date" not in item:
        candidates = (item.get("log_id"), inner.get("log_id"), inner.get("_id"))
        data = inner
    else:
        candidates = (item.get("log_id"), item.get("_id"))
        data = item
    for candidate in candidates:
        if log_id := _usable_id(candidate):
            return StreamEvent(log_id, data)
    digest = hashlib.sha256(encode(item, orjson.OPT_SORT_KEYS)).hexdigest()
    return StreamEvent(f"sha256:{digest}", data, id_generated=True)


def _usable_id(value: object) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value).strip() or None
    return None


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
