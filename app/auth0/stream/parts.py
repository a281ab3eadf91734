"""A stream body read a part at a time (parse_parts), as parse_body reads it whole."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import orjson

from app.auth0.stream.body import BOM, lone_event, parse_body, parse_document
from app.auth0.stream.cut import Cut, cut_items, first_error, is_plain
from app.auth0.stream.items import add_item, add_line, add_raw
from app.auth0.stream.jsontext import ITEM_ERRORS, loads, where_broken, where_broken_in
from app.auth0.stream.parsed import BodyError, Framing, ParsedBody


def parse_parts(body: bytes, max_event_bytes: int, size: int) -> Iterator[ParsedBody]:
    """parse_body's events and rejections, the same and in the same order, in parts of at most `size`
    lines or items; only one part's objects exist at a time (parse_body holds every event's at once,
    over a kilobyte each). For a large body: it reads an array twice, and costs more than parse_body.
    A body that is one event, or an odd document that only orjson can tell apart, is read whole, in
    one part.

    A body parse_body refuses is refused (BodyError) before the first part, so nothing of it is
    stored."""
    if body.startswith(BOM):
        body = b"   " + body[len(BOM) :]
    if not body.strip():
        raise BodyError("the body is empty")
    cut = cut_items(body)
    read: Callable[[], Iterator[ParsedBody]]
    where: Callable[[], str] | None = None
    if cut is None:
        # JSON Lines, one event, or no JSON: orjson stops at the end of the first value (a line) or
        # at its first error, as in parse_body.
        try:
            document = loads(body)
        except orjson.JSONDecodeError as exc:
            where = partial(where_broken, exc)
            read = partial(_line_parts, body, size, max_event_bytes, where)
            if (lone := lone_event(body, exc)) is not None:
                read = partial(iter, [lone])
        else:
            whole = parse_document(document, body, max_event_bytes)
            read = partial(iter, [whole])
    elif not is_plain(cut, body):
        # A page with more than its `logs` to read, or odd bytes around the document: read whole.
        whole = parse_body(body, max_event_bytes)
        read = partial(iter, [whole])
    elif (error := first_error(cut, body, size)) is None:
        read = partial(_document_parts, cut, body, size, max_event_bytes)
    elif error.startswith(ITEM_ERRORS):
        read = partial(_item_parts, cut, body, size, max_event_bytes)
    else:
        # Where the error lies in the whole body is wanted only to refuse it: orjson finds it.
        where = partial(where_broken_in, body)
        read = partial(_line_parts, body, size, max_event_bytes, where)
    yield from _from_first_json(read, where)


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
        add_line(parsed, number, body[start:end], max_event_bytes)
        if parsed.received == size:
            yield parsed
            parsed = ParsedBody("jsonl")
        start, number = end + 1, number + 1
    if parsed.received:
        yield parsed


def _document_parts(cut: Cut, body: bytes, size: int, max_event_bytes: int) -> Iterator[ParsedBody]:
    """parse_document's parts, for a body orjson reads whole (first_error found no error)."""
    for first in range(0, len(cut), size):
        items = loads(cut.window(body, first, min(first + size, len(cut))))
        parsed = ParsedBody(cut.framing)
        for index, item in enumerate(items if cut.framing == "array" else items[0], start=first):
            add_item(parsed, index, item, None, max_event_bytes)
        for rejected in parsed.rejected:
            rejected.raw = rejected.raw or cut.item(body, rejected.position)
        yield parsed


def _item_parts(cut: Cut, body: bytes, size: int, max_event_bytes: int) -> Iterator[ParsedBody]:
    """parse_items' parts: each item read alone, as sent."""
    for first in range(0, len(cut), size):
        parsed = ParsedBody(cut.framing)
        for index in range(first, min(first + size, len(cut))):
            add_raw(parsed, index, cut.item(body, index), True, max_event_bytes)
        yield parsed
