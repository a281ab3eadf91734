"""A stream body read whole (parse_body)."""

from __future__ import annotations

import orjson

from app.auth0.stream.cut import is_one_value, split_items
from app.auth0.stream.event import EVENT_KEYS
from app.auth0.stream.items import add_item, add_raw
from app.auth0.stream.jsontext import ITEM_ERRORS, invalid_json, kind, loads, where_broken
from app.auth0.stream.parsed import BodyError, Framing, ParsedBody, Rejected

BOM = b"\xef\xbb\xbf"


def parse_body(body: bytes, max_event_bytes: int) -> ParsedBody:
    """Split a stream body into events and rejected items; raise BodyError if the body is not one a log
    stream sends: empty, not JSON (no line of it is), a JSON scalar. A body of lines or items none of
    which is an event is not refused: each is rejected alone, as beside a good one."""
    if body.startswith(BOM):
        body = b"   " + body[len(BOM) :]  # blanked, not cut, so positions stay those of the body as sent
    if not body.strip():
        raise BodyError("the body is empty")
    try:
        document = loads(body)
    except orjson.JSONDecodeError as exc:
        where = where_broken(exc)
        # A value orjson cannot hold fails one item, not the well-formed array or page around it.
        split = split_items(body) if exc.msg.startswith(ITEM_ERRORS) else None
        if split is not None:
            parsed = parse_items(*split, max_event_bytes)
        elif (lone := lone_event(body, exc)) is not None:
            parsed = lone
        elif b"\n" not in body:
            raise BodyError(where) from None
        else:
            # Several lines are read as JSON Lines, which keeps every good line. If none is JSON, the
            # body was one broken document: say where it breaks.
            parsed = parse_lines(body, max_event_bytes)
            if not parsed.is_json:
                raise BodyError(where) from None
    else:
        parsed = parse_document(document, body, max_event_bytes)
    return parsed


def lone_event(body: bytes, exc: orjson.JSONDecodeError) -> ParsedBody | None:
    """A body that is one object with a value orjson cannot hold, as one rejected item; else None."""
    if not exc.msg.startswith(ITEM_ERRORS) or not body.lstrip().startswith(b"{") or not is_one_value(body):
        return None
    return ParsedBody("object", rejected=[Rejected(0, invalid_json(exc, ""), body.strip())])


def parse_lines(body: bytes, max_event_bytes: int) -> ParsedBody:
    parsed = ParsedBody("jsonl")
    for number, line in enumerate(body.split(b"\n"), start=1):
        # add_line, inline: the call per line was a measurable part of a small body's cost.
        line = line.strip()
        if not line:
            continue
        if len(line) > max_event_bytes:
            reason = f"{len(line)} bytes exceeds MAX_EVENT_BYTES ({max_event_bytes})"
            parsed.rejected.append(Rejected(number, reason, line))
            continue
        add_raw(parsed, number, line, False, max_event_bytes)
    return parsed


def parse_document(document: object, body: bytes, max_event_bytes: int) -> ParsedBody:
    if isinstance(document, list):
        parsed, items = ParsedBody("array"), document
    elif isinstance(document, dict):
        parsed = ParsedBody("object")
        logs = document.get("logs") if not document.keys() & EVENT_KEYS else None
        items = logs if isinstance(logs, list) else [document]
    else:
        raise BodyError(f"the body is a JSON {kind(document)}; expected an object, an array or JSON Lines")
    for index, item in enumerate(items):
        add_item(parsed, index, item, None, max_event_bytes)
    if any(not rejected.raw for rejected in parsed.rejected):
        # An item too deep for json to write again either (it recurses, to about 1,000 levels) is
        # quarantined as sent.
        split = split_items(body)
        sent = split[1] if split else [body.strip()]
        for rejected in parsed.rejected if len(sent) == len(items) else ():
            rejected.raw = rejected.raw or sent[rejected.position]
    return parsed


def parse_items(framing: Framing, items: list[bytes], max_event_bytes: int) -> ParsedBody:
    parsed = ParsedBody(framing)
    for index, raw in enumerate(items):
        add_raw(parsed, index, raw, True, max_event_bytes)
    return parsed
