"""JSON text as orjson reads it for the parser: lone surrogate escapes, the errors that fail one item
alone, and what an error says of where a body breaks."""

from __future__ import annotations

import re
from typing import Any

import orjson

# orjson's errors for a value it cannot hold in a well-formed document (JSON sets no bound on either).
ITEM_ERRORS = ("number is infinity", "depth limit exceeded")


# A UTF-16 surrogate escape after an even run of backslashes (an odd run makes it text): a high one
# with its low one (a pair, kept), a high one alone, or a low one alone.
_SURROGATE_ESCAPE = re.compile(
    rb"(?<!\\)((?:\\\\)*)(\\u[dD][89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
    rb"|\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


def loads(data: bytes) -> Any:
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


def where_broken(exc: orjson.JSONDecodeError) -> str:
    return f"invalid JSON at line {exc.lineno}, column {exc.colno} (char {exc.pos}): {exc.msg}"


def where_broken_in(body: bytes) -> str:
    try:
        loads(body)
    except orjson.JSONDecodeError as exc:
        return where_broken(exc)
    raise AssertionError("a body read as broken JSON that orjson reads")


def invalid_json(exc: orjson.JSONDecodeError, where: str) -> str:
    return f"invalid JSON at column {exc.colno}{where}: {exc.msg}"


def kind(value: object) -> str:
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
