"""The Custom Webhook log stream body: framing, event shapes and log ids. Pure; no I/O.

Auth0 labels JSON Lines `application/json` too, so the framing is read from the body itself:
a whole JSON array or object, else one JSON document per line.
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
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
_JSON_SPACE = b" \t\r\n"
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
    broken: int = 0  # of the rejected, lines that are not JSON at all

    @property
    def received(self) -> int:
        return len(self.events) + len(self.rejected)

    @property
    def is_json(self) -> bool:
        """Whether anything in it is JSON: a body with no line that is, is refused whole."""
        return self.received > self.broken


def parse_body(body: bytes, max_event_bytes: int) -> ParsedBody:
    """Split a stream body into events and rejected items; raise BodyError if the body is not one a log
    stream sends: empty, not JSON (no line of it is), a JSON scalar. A body of lines or items none of
    which is an event is not refused: each is rejected alone, as beside a good one."""
    if body.startswith(_BOM):
        body = b"   " + body[len(_BOM) :]  # blanked, not cut, so positions stay those of the body as sent
    if not body.strip():
        raise BodyError("the body is empty")
    try:
        document = _loads(body)
    except orjson.JSONDecodeError as exc:
        where = _where(exc)
        # A value orjson cannot hold fails one item, not the well-formed array or page around it.
        split = _split_items(body) if exc.msg.startswith(_ITEM_ERRORS) else None
        if split is not None:
            parsed = _parse_items(*split, max_event_bytes)
        elif (lone := _lone_event(body, exc)) is not None:
            parsed = lone
        elif b"\n" not in body:
            raise BodyError(where) from None
        else:
            # Several lines are read as JSON Lines, which keeps every good line. If none is JSON, the
            # body was one broken document: say where it breaks.
            parsed = _parse_lines(body, max_event_bytes)
            if not parsed.is_json:
                raise BodyError(where) from None
    else:
        parsed = _parse_document(document, body, max_event_bytes)
    return parsed


def parse_parts(body: bytes, max_event_bytes: int, size: int) -> Iterator[ParsedBody]:
    """parse_body's events and rejections, the same and in the same order, in parts of at most `size`
    lines or items; only one part's objects exist at a time (parse_body holds every event's at once,
    over a kilobyte each). For a large body: it reads an array twice, and costs more than parse_body.
    A body that is one event, or an odd document that only orjson can tell apart, is read whole, in
    one part.

    A body parse_body refuses is refused (BodyError) before the first part, so nothing of it is
    stored."""
    if body.startswith(_BOM):
        body = b"   " + body[len(_BOM) :]
    if not body.strip():
        raise BodyError("the body is empty")
    cut = _cut_items(body)
    read: Callable[[], Iterator[ParsedBody]]
    where: Callable[[], str] | None = None
    if cut is None:
        # JSON Lines, one event, or no JSON: orjson stops at the end of the first value (a line) or
        # at its first error, as in parse_body.
        try:
            document = _loads(body)
        except orjson.JSONDecodeError as exc:
            where = partial(_where, exc)
            read = partial(_line_parts, body, size, max_event_bytes, where)
            if (lone := _lone_event(body, exc)) is not None:
                read = partial(iter, [lone])
        else:
            whole = _parse_document(document, body, max_event_bytes)
            read = partial(iter, [whole])
    elif not _is_plain(cut, body):
        # A page with more than its `logs` to read, or odd bytes around the document: read whole.
        whole = parse_body(body, max_event_bytes)
        read = partial(iter, [whole])
    elif (error := _first_error(cut, body, size)) is None:
        read = partial(_document_parts, cut, body, size, max_event_bytes)
    elif error.startswith(_ITEM_ERRORS):
        read = partial(_item_parts, cut, body, size, max_event_bytes)
    else:
        # Where the error lies in the whole body is wanted only to refuse it: orjson finds it.
        where = partial(_where_in, body)
        read = partial(_line_parts, body, size, max_event_bytes, where)
    yield from _from_first_json(read, where)


def _lone_event(body: bytes, exc: orjson.JSONDecodeError) -> ParsedBody | None:
    """A body that is one object with a value orjson cannot hold, as one rejected item; else None."""
    if not exc.msg.startswith(_ITEM_ERRORS) or not body.lstrip().startswith(b"{") or not _is_one_value(body):
        return None
    return ParsedBody("object", rejected=[Rejected(0, _reason(exc, ""), body.strip())])


def _is_one_value(text: bytes) -> bool:
    """Whether `text` is one object or array as far as its brackets and strings tell: they match and
    end, and nothing follows. For a value orjson stopped in (a number beyond a double, nesting past 1024
    levels) without reading the rest: only then is it taken for JSON that orjson cannot hold."""
    start = len(text) - len(text.lstrip())
    if not text.startswith((b"{", b"["), start):
        return False
    opened = bytearray()
    for token in _TOKENS.finditer(text, start):
        char = text[token.start()]
        if char == _QUOTE:
            if token.end() - token.start() == 1:
                return False  # a string that never ends
        elif char in _OPENERS:
            opened.append(char)
        elif char in _CLOSERS:
            if not opened or opened.pop() != _OPENERS[_CLOSERS.index(char)]:
                return False
            if not opened:
                return not text[token.end() :].strip()
    return False


def _where(exc: orjson.JSONDecodeError) -> str:
    return f"invalid JSON at line {exc.lineno}, column {exc.colno} (char {exc.pos}): {exc.msg}"


def _where_in(body: bytes) -> str:
    try:
        _loads(body)
    except orjson.JSONDecodeError as exc:
        return _where(exc)
    raise AssertionError("a body read as broken JSON that orjson reads")


def _from_first_json(
    read: Callable[[], Iterator[ParsedBody]], where: Callable[[], str] | None
) -> Iterator[ParsedBody]:
    """The parts `read` gives, once one has a line or item that is JSON; BodyError, as parse_body says
    it, if none has. `where`: for JSON Lines, where orjson found the body broken.

    The parts before it are let go as they are read (a body of 16 MiB of bad lines held them all,
    2 GB), and read again from the start once it comes."""
    parts = read()
    framing: Framing | None = None
    broken = False
    for count, part in enumerate(parts):
        if part.is_json:
            if count:
                parts = read()
            else:
                yield part
            yield from parts
            return
        framing, broken = part.framing, broken or bool(part.received)
    if broken:
        assert where is not None, "only lines are not JSON, and then orjson says where the body breaks"
        raise BodyError(where())
    if framing is not None:  # nothing at all, such as `[]`: not refused
        yield ParsedBody(framing)


def _parse_lines(body: bytes, max_event_bytes: int) -> ParsedBody:
    parsed = ParsedBody("jsonl")
    for number, line in enumerate(body.split(b"\n"), start=1):
        # _add_line, inline: the call per line was a measurable part of a small body's cost.
        line = line.strip()
        if not line:
            continue
        if len(line) > max_event_bytes:
            reason = f"{len(line)} bytes exceeds MAX_EVENT_BYTES ({max_event_bytes})"
            parsed.rejected.append(Rejected(number, reason, line))
            continue
        _add_raw(parsed, number, line, False, max_event_bytes)
    return parsed


def _line_parts(
    body: bytes, size: int, max_event_bytes: int, where: Callable[[], str]
) -> Iterator[ParsedBody]:
    """parse_body's reading of a body that is not one JSON document, a part at a time: the lines are
    cut from the body as they are read."""
    if b"\n" not in body:
        raise BodyError(where())
    parsed = ParsedBody("jsonl")
    start, number = 0, 1
    while start <= len(body):
        end = body.find(b"\n", start)
        end = len(body) if end == -1 else end
        _add_line(parsed, number, body[start:end], max_event_bytes)
        if parsed.received == size:
            yield parsed
            parsed = ParsedBody("jsonl")
        start, number = end + 1, number + 1
    if parsed.received:
        yield parsed


def _add_line(parsed: ParsedBody, number: int, line: bytes, max_event_bytes: int) -> None:
    line = line.strip()
    if not line:
        return
    if len(line) > max_event_bytes:
        reason = f"{len(line)} bytes exceeds MAX_EVENT_BYTES ({max_event_bytes})"
        parsed.rejected.append(Rejected(number, reason, line))
        return
    _add_raw(parsed, number, line, False, max_event_bytes)


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
        _add_raw(parsed, index, raw, True, max_event_bytes)
    return parsed


def _add_raw(parsed: ParsedBody, position: int, raw: bytes, item: bool, max_event_bytes: int) -> None:
    """One line, or item of an array cut from the body, as sent: its event, or its rejection."""
    try:
        value = _loads(raw)
    except orjson.JSONDecodeError as exc:
        parsed.rejected.append(Rejected(position, _reason(exc, " of the item" if item else ""), raw))
        # An item's brackets are those of the array it was cut from; a line has only its own.
        if not exc.msg.startswith(_ITEM_ERRORS) or not (item or _is_one_value(raw)):
            parsed.broken += 1
        return
    _add_item(parsed, position, value, raw, max_event_bytes)


def _reason(exc: orjson.JSONDecodeError, where: str) -> str:
    return f"invalid JSON at column {exc.colno}{where}: {exc.msg}"


def _split_items(body: bytes) -> tuple[Framing, list[bytes]] | None:
    """The items of a body that is one array, or one page `{"logs": [...]}`, as sent (stripped);
    None if it is neither. Only strings and brackets are read here: each item is parsed on its own."""
    cut = _cut_items(body)
    return None if cut is None else (cut.framing, [cut.item(body, i) for i in range(len(cut))])


@dataclass(slots=True)
class _Cut:
    """Where the items of a body that is one array, or one page, lie in it."""

    framing: Framing
    start: int  # the document's first byte
    end: int  # after its last
    bounds: array[int]  # item i is body[bounds[i] : bounds[i + 1] - 1], unstripped; empty if none
    logs: tuple[int, int] = (0, 0)  # a page's `logs` array, brackets included

    def __len__(self) -> int:
        return max(len(self.bounds) - 1, 0)

    def item(self, body: bytes, index: int) -> bytes:
        return body[self.bounds[index] : self.bounds[index + 1] - 1].strip()

    def window(self, body: bytes, first: int, last: int) -> bytes:
        """Items first to last (excluded) as one array, nested as deep as in the body, so that orjson
        reads them as it would read them there (its depth limit counts the levels around them)."""
        items = body[self.bounds[first] : self.bounds[last] - 1]
        return b"[" + items + b"]" if self.framing == "array" else b"[[" + items + b"]]"


def _cut_items(body: bytes) -> _Cut | None:
    start = len(body) - len(body.lstrip())
    if body.startswith(b"[", start):
        framing: Framing = "array"
    elif body.startswith(b"{", start):
        framing = "object"
    else:
        return None
    opened = bytearray()  # the brackets open at this point
    depth_of_items = 1 if framing == "array" else 0  # a page's: 2 once its `logs` opens, -1 once read
    bounds = array("q", [start + 1])
    logs_start = 0
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
                # A later `logs` wins, as in a dict.
                depth_of_items, bounds, logs_start = 2, array("q", [token.end()]), token.start()
        elif char in _CLOSERS:
            if not opened or opened.pop() != _OPENERS[_CLOSERS.index(char)]:
                return None
            if depth == depth_of_items:
                if len(bounds) > 1 or body[bounds[-1] : token.start()].strip():
                    bounds.append(token.end())
                else:
                    bounds = array("q")  # no item
                if framing == "object":
                    depth_of_items, logs = -1, (logs_start, token.end())
            if not opened:
                end = token.end()
                break
        elif depth == depth_of_items:  # a comma between items
            bounds.append(token.end())
        elif depth == 1:  # a comma between a page's fields
            want_key = True
    else:
        return None  # a bracket is never closed
    if body[end:].strip():
        return None  # more than one document: JSON Lines
    if framing == "array":
        return _Cut(framing, start, end, bounds)
    if depth_of_items != -1 or any(key in _EVENT_KEYS for key in keys):
        return None  # an event, or an object without a `logs` array
    return _Cut(framing, start, end, bounds, logs)


def _is_plain(cut: _Cut, body: bytes) -> bool:
    """Whether the items are all there is to read: JSON's whitespace around the document (strip()
    takes more), and in a page, fields that orjson reads and no later `logs` that is not an array."""
    if not len(cut) or body[: cut.start].strip(_JSON_SPACE) or body[cut.end :].strip(_JSON_SPACE):
        return False
    if cut.framing == "array":
        return True
    start, end = cut.logs
    try:
        page = _loads(body[:start] + b"[]" + body[end:])
    except orjson.JSONDecodeError:
        return False
    return isinstance(page, dict) and page.get("logs") == [] and not page.keys() & _EVENT_KEYS


def _first_error(cut: _Cut, body: bytes, size: int) -> str | None:
    """What orjson says of the whole body, read `size` items at a time: None if it reads them all, else
    the message of the error it stops at."""
    error = None
    for first in range(0, len(cut), size):
        last = min(first + size, len(cut))
        window = cut.window(body, first, last)
        if error is not None:
            # orjson checks that the whole text is UTF-8 before it reads any of it.
            try:
                window.decode()
            except UnicodeDecodeError:
                return "str is not valid UTF-8"
            continue
        if last - first == 1 and not cut.item(body, first):
            return "expected a value"  # a blank item alone would read as an empty array
        try:
            _loads(window)
        except orjson.JSONDecodeError as exc:
            if not exc.msg.startswith(_ITEM_ERRORS):
                return str(exc.msg)
            error = str(exc.msg)  # the body is read item by item, unless it is not UTF-8
    return error


def _document_parts(cut: _Cut, body: bytes, size: int, max_event_bytes: int) -> Iterator[ParsedBody]:
    """_parse_document's parts, for a body orjson reads whole (_first_error found no error)."""
    for first in range(0, len(cut), size):
        items = _loads(cut.window(body, first, min(first + size, len(cut))))
        parsed = ParsedBody(cut.framing)
        for index, item in enumerate(items if cut.framing == "array" else items[0], start=first):
            _add_item(parsed, index, item, None, max_event_bytes)
        for rejected in parsed.rejected:
            rejected.raw = rejected.raw or cut.item(body, rejected.position)
        yield parsed


def _item_parts(cut: _Cut, body: bytes, size: int, max_event_bytes: int) -> Iterator[ParsedBody]:
    """_parse_items' parts: each item read alone, as sent."""
    for first in range(0, len(cut), size):
        parsed = ParsedBody(cut.framing)
        for index in range(first, min(first + size, len(cut))):
            _add_raw(parsed, index, cut.item(body, index), True, max_event_bytes)
        yield parsed


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
