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
# orjson's errors for a value it cannot hold in a well-formed document (JSON sets no bound on either).
_ITEM_ERRORS = ("number is infinity", "depth limit exceeded")
# What cutting an array into its items reads: strings whole (escapes and all; a lone quote is one that
# never ends), brackets and commas.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|["\[\]{},]', re.DOTALL)
_QUOTE, _BRACKET = ord('"'), ord("[")
_OPENERS, _CLOSERS = b"[{", b"]}"
# A UTF-16 surrogate escape after an even run of backslashes (an odd run makes it text): a high one
# with its low one (a pair, kept), a high one alone, or a low one alone.
_SURROGATE_ESCAPE = re.compile(
    rb"(?<!\\)((?:\\\\)*)(\\u[dD][89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
    rb"|\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


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
        # A value orjson cannot hold fails one item, not the well-formed array or page around it.
        split = _split_items(body) if exc.msg.startswith(_ITEM_ERRORS) else None
        if split is not None:
            parsed = _parse_items(*split, max_event_bytes)
        elif b"\n" not in body:
            raise BodyError(where) from None
        else:
            # Several lines are read as JSON Lines, which keeps every good line. If none is good and
            # the first is broken JSON, the body was one broken document: say where it breaks.
            parsed = _parse_lines(body, max_event_bytes)
            if not parsed.events and parsed.rejected[0].reason.startswith("invalid JSON"):
                raise BodyError(where) from None
    else:
        parsed = _parse_document(document, body, max_event_bytes)
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
        _add_raw(parsed, number, line, "", max_event_bytes)
    return parsed


def _parse_document(document: object, body: bytes, max_event_bytes: int) -> ParsedBody:
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
    if any(not rejected.raw for rejected in parsed.rejected):
        # An item too deep for json to write again either (it recurses, to about 1,000 levels) is
        # quarantined as sent.
        split = _split_items(body)
        sent = split[1] if split else [body.strip()]
        for rejected in parsed.rejected if len(sent) == len(items) else ():
            rejected.raw = rejected.raw or sent[rejected.position]
    return parsed


def _parse_items(framing: Framing, items: list[bytes], max_event_bytes: int) -> ParsedBody:
    parsed = ParsedBody(framing)
    for index, raw in enumerate(items):
        _add_raw(parsed, index, raw, " of the item", max_event_bytes)
    return parsed


def _add_raw(parsed: ParsedBody, position: int, raw: bytes, where: str, max_event_bytes: int) -> None:
    """One line or item, as sent: its event, or its rejection."""
    try:
        item = _loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = f"invalid JSON at column {exc.colno}{where}: {exc.msg}"
        parsed.rejected.append(Rejected(position, reason, raw))
        return
    _add_item(parsed, position, item, raw, max_event_bytes)


def _split_items(body: bytes) -> tuple[Framing, list[bytes]] | None:
    """The items of a body that is one array, or one page `{"logs": [...]}`, as sent (stripped);
    None if it is neither. Only strings and brackets are read here: each item is parsed on its own."""
    start = len(body) - len(body.lstrip())
    if body.startswith(b"[", start):
        framing: Framing = "array"
    elif body.startswith(b"{", start):
        framing = "object"
    else:
        return None
    opened = bytearray()  # the brackets open at this point
    depth_of_items = 1 if framing == "array" else 0  # a page's: 2 once its `logs` opens, -1 once read
    items: list[bytes] = []
    item_start = start + 1
    keys: list[object] = []  # a page's keys
    want_key = framing == "object"
    for token in _TOKENS.finditer(body, start):
        char, depth = body[token.start()], len(opened)
        if char == _QUOTE:
            if token.end() - token.start() == 1:
                return None  # a string that never ends
            if depth == 1 and want_key:
                keys.append(_key(token.group()))
                want_key = False
        elif char in _OPENERS:
            opened.append(char)
            if (
                char == _BRACKET
                and depth == 1
                and framing == "object"
                and not want_key
                and keys[-1] == "logs"
            ):
                depth_of_items, items, item_start = 2, [], token.end()  # a later `logs` wins, as in a dict
        elif char in _CLOSERS:
            if not opened or opened.pop() != _OPENERS[_CLOSERS.index(char)]:
                return None
            if depth == depth_of_items:
                last = body[item_start : token.start()].strip()
                if last or items:
                    items.append(last)
                if framing == "object":
                    depth_of_items = -1
            if not opened:
                end = token.end()
                break
        elif depth == depth_of_items:  # a comma between items
            items.append(body[item_start : token.start()].strip())
            item_start = token.end()
        elif depth == 1:  # a comma between a page's fields
            want_key = True
    else:
        return None  # a bracket is never closed
    if body[end:].strip():
        return None  # more than one document: JSON Lines
    if framing == "object" and (depth_of_items != -1 or any(key in _EVENT_KEYS for key in keys)):
        return None  # an event, or an object without a `logs` array
    return framing, items


def _key(token: bytes) -> object:
    try:
        return _loads(token)
    except orjson.JSONDecodeError:
        return None


def _add_item(
    parsed: ParsedBody, position: int, item: object, raw: bytes | None, max_event_bytes: int
) -> None:
    if not isinstance(item, dict):
        reason = f"expected a JSON object, got a JSON {_kind(item)}"
        parsed.rejected.append(Rejected(position, reason, raw or verbatim(item)))
        return
    try:
        event = to_event(item)
        event.encoded = _compact(encode(event.data))
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
        return _compact(orjson.dumps(item))
    except TypeError:
        pass
    try:
        return json.dumps(item).encode()  # no 255-level limit; \u-escapes whatever orjson cannot write
    except RecursionError:
        return b""


def _compact(data: bytes) -> bytes:
    """A copy the size of its content: orjson hands back its whole working buffer (4 KiB or more,
    however short the JSON), and a body's events and rejected items live until it is stored."""
    return bytes(memoryview(data))


def _loads(data: bytes) -> Any:
    """orjson, except for text with a lone UTF-16 surrogate escape (JavaScript writes one for half an
    emoji): JSON allows it, orjson refuses it, and no UTF-8 text can hold it, so it becomes U+FFFD.

    The escape is replaced in the JSON text, at the same length, and orjson reads it again: numbers,
    depth and positions then follow the same rules as everywhere else."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "surrogate" not in exc.msg:
            raise
        text, replaced = _SURROGATE_ESCAPE.subn(_keep_pairs, data)
        if not replaced:  # invalid UTF-8, which orjson reports as a surrogate too
            raise
    return orjson.loads(text)


def _keep_pairs(match: re.Match[bytes]) -> bytes:
    escapes, surrogate = match.groups()
    return match.group() if len(surrogate) == 12 else escapes + rb"\ufffd"


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
