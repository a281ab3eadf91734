"""Property tests of the parser and the normaliser (parse_body, to_rows) on arbitrary bytes and on
the real fixtures, mutated: they never raise but BodyError, never lose a good event beside a bad one,
and account for every item; and parse_parts reads every body as parse_body does."""

from __future__ import annotations

from datetime import UTC, datetime
from random import Random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.auth0.stream.body import parse_body
from app.auth0.stream.cut import split_items
from app.auth0.stream.event import StreamEvent, to_event
from app.auth0.stream.parsed import BodyError, ParsedBody, Rejected
from app.auth0.stream.parts import parse_parts
from app.db import RawJSON
from app.ingest import _NUL, MAX_COLUMN_CHARS, MAX_LOG_ID_CHARS, _raw_json, _sqlite_datetime, to_rows
from tests.strategies import DETERMINISTIC, ITEMS, frame, mixed_body, not_an_object

MAX = 1024 * 1024
NOW = datetime(2026, 11, 23, tzinfo=UTC)
COLUMNS = ("user_id", "user_name", "client_id", "client_name", "connection", "ip", "description")


def parse_and_normalise(body: bytes) -> tuple[ParsedBody, list[str], list[Rejected]] | None:
    """What the receiver does before the store, checked: the stored ids and every rejection, or None
    for a body refused whole (BodyError, the one exception allowed)."""
    try:
        parsed = parse_body(body, MAX)
    except BodyError as exc:
        refused = str(exc)
    else:
        refused = ""
    for size in PART_SIZES:
        assert_read_in_parts_as_whole(body, size, refused or parsed)
    if refused:
        return None
    # Refused whole are bodies that are not JSON: one with a line or item that is, is read.
    assert parsed.is_json or not parsed.received
    rows, refused = to_rows(parsed.events, "stream", NOW)
    assert len(rows) + len(refused) == len(parsed.events)
    rejected = parsed.rejected + refused
    for r in rejected:
        assert r.reason
        assert "\x00" not in r.reason  # a text column on PostgreSQL
        assert r.raw
        assert r.position >= 0
    for row in rows:
        assert 0 < len(row["log_id"]) <= MAX_LOG_ID_CHARS
        assert "\x00" not in row["log_id"]
        assert type(row["data"]) is RawJSON
        assert isinstance(orjson.loads(str(row["data"])), dict)
        assert row["date"].tzinfo is not None
        _sqlite_datetime(row["date"])
        for column in COLUMNS:
            assert row[column] is None or len(row[column]) <= MAX_COLUMN_CHARS
    # The document PostgreSQL unpacks: it must be JSON PostgreSQL takes (no NUL character).
    document = orjson.dumps(rows, default=_raw_json, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    assert not _NUL.search(document)
    return parsed, [row["log_id"] for row in rows], rejected


PART_SIZES = (1, 2, 3, 1000)


def assert_read_in_parts_as_whole(body: bytes, size: int, whole: ParsedBody | str) -> None:
    """parse_parts gives parse_body's events and rejections, in order, in parts of at most `size`
    lines or items (or in one, for a body read whole); or the same BodyError, before any part."""
    if isinstance(whole, str):
        with pytest.raises(BodyError) as refused:
            next(parse_parts(body, MAX, size))  # before the first part
        assert str(refused.value) == whole
        return
    parts = list(parse_parts(body, MAX, size))
    assert all(0 < part.received <= size for part in parts) or len(parts) == 1  # or read whole
    assert {part.framing for part in parts} == {whole.framing}
    assert [_event(e) for part in parts for e in part.events] == [_event(e) for e in whole.events]
    assert [_rejected(r) for part in parts for r in part.rejected] == [_rejected(r) for r in whole.rejected]


def _event(e: StreamEvent) -> tuple[object, ...]:
    return (e.log_id, e.data, e.id_generated, e.encoded, e.position, e.raw, e.item)


def _rejected(rejected: Rejected) -> tuple[object, ...]:
    return (rejected.position, rejected.reason, rejected.raw)


@DETERMINISTIC
@given(st.binary(max_size=512))
def test_any_bytes(body: bytes) -> None:
    parse_and_normalise(body)


@DETERMINISTIC
@given(st.binary(max_size=64), st.integers(0, 1000), st.sampled_from(["array", "jsonl", "page"]))
def test_fixture_bodies_with_bytes_changed(junk: bytes, at: int, framing: str) -> None:
    body = frame([orjson.dumps(item) for item in ITEMS[:4]], framing)
    at %= len(body)
    parse_and_normalise(body[:at] + junk + body[at + len(junk) :])
    parse_and_normalise(body[:at] + junk + body[at:])
    parse_and_normalise(body[:at])


@DETERMINISTIC
@given(mixed_body())
def test_no_good_event_is_lost_beside_odd_ones(example: tuple[bytes, list[str], int, bool]) -> None:
    body, good, count, _ = example
    result = parse_and_normalise(body)
    assert result is not None, body[:200]
    parsed, stored, rejected = result
    assert parsed.received == count
    assert set(good) <= set(stored)
    assert len(stored) + len(rejected) == count


@DETERMINISTIC
@given(
    st.lists(st.sampled_from(ITEMS), min_size=1, max_size=3),
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")) | not_an_object(), max_size=4),
    st.randoms(use_true_random=False),
    st.sampled_from([b"\n", b"\r\n", b"\n\n"]),
)
def test_no_good_line_is_lost_beside_garbage(
    good: list[dict[str, object]], garbage: list[bytes], random: Random, newline: bytes
) -> None:
    lines = [orjson.dumps(item) for item in good] + garbage
    random.shuffle(lines)
    result = parse_and_normalise(newline.join(lines))
    assert result is not None
    _, stored, _ = result
    assert {to_event(item).log_id for item in good} <= set(stored)


# Text full of what the splitter must not take for structure.
_tricky = st.text(alphabet=st.sampled_from(list('ab"\\[]{},: \n\u00e9\U0001f600')), max_size=8)
_tricky_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _tricky,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_tricky, inner, max_size=3),
    max_leaves=10,
)


@DETERMINISTIC
@given(
    st.lists(_tricky_values, max_size=5), st.dictionaries(_tricky, _tricky_values, max_size=2), st.booleans()
)
def test_items_cut_from_an_array_or_a_page_are_those_orjson_reads(
    items: list[object], fields: dict[str, object], pretty: bool
) -> None:
    """What a body with a value orjson refuses is cut into: checked on bodies orjson reads whole."""
    option = orjson.OPT_INDENT_2 if pretty else None
    page = {
        key: value
        for key, value in fields.items()
        if key not in ("logs", "log_id", "_id", "data", "type", "date")
    }
    for framing, body in (
        ("array", orjson.dumps(items, option=option)),
        ("object", orjson.dumps({**page, "logs": items}, option=option)),
    ):
        split = split_items(body)
        assert split is not None, body
        assert split[0] == framing
        assert [orjson.loads(item) for item in split[1]] == items
