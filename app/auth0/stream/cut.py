"""Where the items of a body that is one array, or one page `{"logs": [...]}`, lie in it: read from its
brackets and strings alone, so that each item can be parsed on its own."""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass

import orjson

from app.auth0.stream.event import EVENT_KEYS
from app.auth0.stream.jsontext import ITEM_ERRORS, loads
from app.auth0.stream.parsed import Framing

# What cutting an array into its items reads: strings whole (escapes and all; a lone quote is one that
# never ends), brackets and commas.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|["\[\]{},]', re.DOTALL)


_QUOTE, _BRACKET = ord('"'), ord("[")


_JSON_SPACE = b" \t\r\n"


_OPENERS, _CLOSERS = b"[{", b"]}"


def is_one_value(text: bytes) -> bool:
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


def split_items(body: bytes) -> tuple[Framing, list[bytes]] | None:
    """The items of a body that is one array, or one page `{"logs": [...]}`, as sent (stripped);
    None if it is neither. Only strings and brackets are read here: each item is parsed on its own."""
    cut = cut_items(body)
    return None if cut is None else (cut.framing, [cut.item(body, i) for i in range(len(cut))])


@dataclass(slots=True)
class Cut:
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


def cut_items(body: bytes) -> Cut | None:
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
        return Cut(framing, start, end, bounds)
    if depth_of_items != -1 or any(key in EVENT_KEYS for key in keys):
        return None  # an event, or an object without a `logs` array
    return Cut(framing, start, end, bounds, logs)


def is_plain(cut: Cut, body: bytes) -> bool:
    """Whether the items are all there is to read: JSON's whitespace around the document (strip()
    takes more), and in a page, fields that orjson reads and no later `logs` that is not an array."""
    if not len(cut) or body[: cut.start].strip(_JSON_SPACE) or body[cut.end :].strip(_JSON_SPACE):
        return False
    if cut.framing == "array":
        return True
    start, end = cut.logs
    try:
        page = loads(body[:start] + b"[]" + body[end:])
    except orjson.JSONDecodeError:
        return False
    return isinstance(page, dict) and page.get("logs") == [] and not page.keys() & EVENT_KEYS


def first_error(cut: Cut, body: bytes, size: int) -> str | None:
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
            loads(window)
        except orjson.JSONDecodeError as exc:
            if not exc.msg.startswith(ITEM_ERRORS):
                return str(exc.msg)
            error = str(exc.msg)  # the body is read item by item, unless it is not UTF-8
    return error


def _key(token: bytes) -> object:
    try:
        return loads(token)
    except orjson.JSONDecodeError:
        return None
