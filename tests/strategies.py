"""Hypothesis strategies for receiver bodies: the real fixtures, mutated, with fresh good events among
them, in every framing. Shared by the property tests of the parser and of the receiver over HTTP.

Every run draws the same examples (derandomized, no example database), so the tests stay
deterministic; `max_examples` keeps them fast."""

from __future__ import annotations

import gzip
import itertools
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.receiver.support import BODY_FIXTURES, fixture_items

# derandomize: the examples are a function of the test alone; database=None: none is kept between runs.
DETERMINISTIC = settings(
    derandomize=True,
    database=None,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ITEMS = [item for name in BODY_FIXTURES for item in fixture_items(name)]
FRAMINGS = ("jsonl", "jsonl-crlf", "jsonl-bom", "array", "array-pretty", "page", "page-bom")

_texts = st.text(max_size=12) | st.sampled_from(
    ["\x00", "a\x00b", " ", "\u00a0", "\ufeff", "\U0001f600", "x" * 300]
)
_ids = st.one_of(
    _texts,
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.just([]),
)
_dates = (
    _texts
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.sampled_from(
        ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-02-30", "2026-11-23", "2026-W47-1"]
    )
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _texts,
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=8,
)
# Valid JSON that orjson cannot read, or that the database cannot hold, written into an item as text.
RAW_VALUES = [
    b"1e400",
    b"-1e400",
    b"9" * 400,
    b"18446744073709551616",
    b"[" * 1100 + b"]" * 1100,
    b"[" * 300 + b"]" * 300,
    b'"\\ud800"',
    b'"\\udc00\\ud83d\\ude00"',
    b'"nul \\u0000"',
    b'"\\\\u0000 is text"',
]
_counter = itertools.count()


def good_event() -> dict[str, Any]:
    """An envelope from the fixtures under a log id no mutated item can take."""
    log_id = f"good-\u2042-{next(_counter)}"
    return {"log_id": log_id, "data": {**ITEMS[0]["data"], "log_id": log_id}}


@st.composite
def mutated_item(draw: st.DrawFn) -> bytes:
    """A fixture item with a few fields changed to odd values, as JSON text."""
    item: dict[str, Any] = orjson.loads(orjson.dumps(draw(st.sampled_from(ITEMS))))
    inner = item.get("data")
    data: dict[str, Any] = inner if isinstance(inner, dict) and "type" not in item else item
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(["log_id", "_id", "date", "type", "user_name", "ip", "details", "new"]))
        where = item if field == "log_id" and draw(st.booleans()) else data
        if field in ("log_id", "_id", "type", "user_name", "ip"):
            where[field] = draw(_ids)
        elif field == "date":
            data["date"] = draw(_dates)
        elif field == "details" and draw(st.booleans()):
            data.pop("details", None)
        else:
            data[field if field == "details" else draw(_texts)] = draw(_values)
    text = orjson.dumps(item)
    if draw(st.booleans()):
        raw = draw(st.sampled_from(RAW_VALUES))
        text = b'{"odd": ' + raw + (b"}" if text == b"{}" else b", " + text[1:])
    return text


def not_an_object() -> st.SearchStrategy[bytes]:
    return _values.filter(lambda v: not isinstance(v, dict)).map(orjson.dumps)


def frame(items: list[bytes], framing: str) -> bytes:
    if framing.startswith("jsonl"):
        newline = b"\r\n" if framing == "jsonl-crlf" else b"\n"
        body = newline.join(items) + newline
    elif framing == "array-pretty":
        body = b"[\n  " + b",\n  ".join(items) + b"\n]\n"
    else:
        body = b"[" + b",".join(items) + b"]"
    if framing.startswith("page"):
        body = b'{"start": 0, "logs": ' + body + b', "total": ' + str(len(items)).encode() + b"}"
    return b"\xef\xbb\xbf" + body if framing.endswith("bom") else body


@st.composite
def mixed_body(draw: st.DrawFn, *, gzipped: bool = False) -> tuple[bytes, list[str], int, bool]:
    """A body of good events among odd items and non-objects, in some framing (and maybe gzip):
    (body, the good events' ids, how many items it holds, whether it is gzip)."""
    good = [good_event() for _ in range(draw(st.integers(1, 3)))]
    odd = draw(st.lists(mutated_item() | not_an_object(), min_size=1, max_size=5))
    items = [orjson.dumps(g) for g in good] + odd
    order = draw(st.permutations(range(len(items))))
    body = frame([items[i] for i in order], draw(st.sampled_from(FRAMINGS)))
    compress = gzipped and draw(st.booleans())
    return (gzip.compress(body) if compress else body), [g["log_id"] for g in good], len(items), compress
