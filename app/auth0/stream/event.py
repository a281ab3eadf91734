"""One log event as the stream carries it: its id (to_event) and its JSON (encode, verbatim)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import orjson

# Keys of a log event or its envelope: an object with none of them that holds `logs` is a page of logs.
EVENT_KEYS = frozenset({"log_id", "_id", "data", "type", "date"})


@dataclass(slots=True)
class StreamEvent:
    log_id: str
    data: dict[str, Any]
    id_generated: bool = False
    encoded: bytes | None = None  # `data` as JSON, once the parser has encoded it
    position: int = 0  # the line (JSON Lines) or item (array) it came from
    raw: bytes | None = None  # the line as sent, kept should the store refuse the event
    item: dict[str, Any] | None = None  # or the array item as sent, envelope and all


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
        return compact(orjson.dumps(item))
    except TypeError:
        pass
    try:
        return json.dumps(item).encode()  # no 255-level limit; \u-escapes whatever orjson cannot write
    except RecursionError:
        return b""


def compact(data: bytes) -> bytes:
    """A copy the size of its content: orjson hands back its whole working buffer (4 KiB or more,
    however short the JSON), and a body's events and rejected items live until it is stored."""
    return bytes(memoryview(data))


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
