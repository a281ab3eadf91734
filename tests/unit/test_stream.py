"""parse_body and to_event: framing decisions, errors and log ids. Pure."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from app.auth0.stream.body import parse_body
from app.auth0.stream.event import to_event
from app.auth0.stream.parsed import BodyError
from app.auth0.stream.parts import parse_parts
from app.ingest import to_rows
from tests.factories import Format, envelope, make_event, make_stream_body

MAX = 1024 * 1024


def ids(body: bytes) -> list[str]:
    return [e.log_id for e in parse_body(body, MAX).events]


@pytest.mark.parametrize(
    ("body", "framing"),
    [
        (b'{"log_id": "a", "data": {}}\n{"log_id": "b", "data": {}}', "jsonl"),
        (b'{"log_id": "a", "data": {}}\r\n\r\n{"log_id": "b", "data": {}}\r\n', "jsonl"),
        (b'[{"log_id": "a", "data": {}}, {"log_id": "b", "data": {}}]', "array"),
        (b'[\n  {"log_id": "a", "data": {}},\n  {"log_id": "b", "data": {}}\n]\n', "array"),
        (b'{"logs": [{"log_id": "a", "data": {}}, {"log_id": "b", "data": {}}]}', "object"),
    ],
)
def test_framing_is_read_from_the_body(body: bytes, framing: str) -> None:
    parsed = parse_body(body, MAX)
    assert parsed.framing == framing
    assert [e.log_id for e in parsed.events] == ["a", "b"]
    assert parsed.received == 2
    assert parsed.rejected == []


def test_single_object_and_single_line() -> None:
    for body in (b'{"log_id": "a", "data": {"type": "s"}}', b'{"log_id": "a", "data": {"type": "s"}}\n'):
        parsed = parse_body(body, MAX)
        assert parsed.framing == "object"
        assert [e.log_id for e in parsed.events] == ["a"]


def test_bom_and_surrounding_whitespace() -> None:
    events = [make_event(), make_event()]
    for fmt in ("jsonl", "array", "object"):
        body = b"\xef\xbb\xbf \r\n" + make_stream_body(events, fmt) + b"\r\n\n"
        assert ids(body) == [e["log_id"] for e in events]


def test_logs_key_unwraps_only_an_object_that_is_not_an_event() -> None:
    """`{"logs": [...]}` is the JSON Object body, also with a page's counts beside it (the Management
    API's shape); an event that merely has a `logs` field is one event."""
    event = {"log_id": "x", "type": "s", "logs": [{"log_id": "inner", "data": {}}]}
    assert ids(orjson.dumps(event)) == ["x"]
    assert ids(b'{"logs": "not a list"}')[0].startswith("sha256:")
    page = {"start": 0, "limit": 2, "length": 2, "total": 2, "logs": [{"_id": "a"}, {"_id": "b"}]}
    assert ids(orjson.dumps(page)) == ["a", "b"]


def test_order_is_kept() -> None:
    events = [make_event() for _ in range(50)]
    assert ids(make_stream_body(events, "jsonl")) == [e["log_id"] for e in events]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", ["empty"]),
        (b"  \r\n\t\n ", ["empty"]),
        (b"\xef\xbb\xbf", ["empty"]),
        (b"{nope", ["invalid JSON", "char"]),
        (b"42", ["number"]),
        (b'"text"', ["string"]),
        (b"null", ["null"]),
        (b"true", ["boolean"]),
        (b"one\ntwo\n", ["line 1"]),
        (b'\n\n{"broken" 1}\n', ["line 3", "char 12"]),
        (b"x\n" + b"[" * 2000 + b"\n{1e400", ["line 1", "char 0"]),  # JSON orjson stops in, unclosed
        (b'{"n": 1e400, "m": [}', ["infinity"]),
        (b"[" * 5000, ["invalid JSON"]),
        (b"\xff\xfe\xfd", ["invalid JSON"]),
    ],
)
def test_a_body_that_is_not_json_raises_naming_where(body: bytes, words: list[str]) -> None:
    with pytest.raises(BodyError) as info:
        parse_body(body, MAX)
    for word in words:
        assert word.lower() in str(info.value).lower(), (word, str(info.value))


@pytest.mark.parametrize(
    ("body", "framing", "positions"),
    [
        (b"[1, 2]", "array", [0, 1]),
        (b"[[]]", "array", [0]),
        (b'{"logs": [1, "x"]}', "object", [0, 1]),
        (b'\n\n"x"\n2\n', "jsonl", [3, 4]),
        (b"not json\n1\n", "jsonl", [1, 2]),  # one line of it is JSON
        (b"x\n" + b"[" * 2000 + b"]" * 2000, "jsonl", [1, 2]),  # ... which orjson cannot hold
    ],
)
def test_lines_or_items_without_an_event_are_rejected_one_by_one(
    body: bytes, framing: str, positions: list[int]
) -> None:
    """A body that is JSON Lines, an array or a page is read line by line or item by item, whether or
    not one is an event: each bad one is rejected alone, as beside a good one."""
    parsed = parse_body(body, MAX)
    assert (parsed.framing, parsed.events) == (framing, [])
    assert [r.position for r in parsed.rejected] == positions


def test_bad_lines_are_rejected_verbatim_with_their_line_numbers() -> None:
    good = orjson.dumps(envelope(make_event()))
    body = b"\n".join([good, b"  {broken  ", b"", b"[1]", b"\xff\xfe", b'"str"', good])
    parsed = parse_body(body, MAX)
    assert parsed.framing == "jsonl"
    assert len(parsed.events) == 2
    assert [(r.position, r.raw) for r in parsed.rejected] == [
        (2, b"{broken"),  # stripped of its surrounding blanks
        (4, b"[1]"),
        (5, b"\xff\xfe"),
        (6, b'"str"'),
    ]
    assert "invalid JSON" in parsed.rejected[0].reason
    assert "array" in parsed.rejected[1].reason
    assert parsed.received == 6


def test_crlf_line_numbers_count_lines_not_separators() -> None:
    good = orjson.dumps(envelope(make_event()))
    parsed = parse_body(good + b"\r\n" + b"bad\r\n" + good + b"\r\n", MAX)
    assert [(r.position, r.raw) for r in parsed.rejected] == [(2, b"bad")]


def test_array_items_that_are_not_objects() -> None:
    good = envelope(make_event())
    parsed = parse_body(orjson.dumps([1, good, None, "s", [good]]), MAX)
    assert parsed.framing == "array"
    assert len(parsed.events) == 1
    assert [r.position for r in parsed.rejected] == [0, 2, 3, 4]
    assert [orjson.loads(r.raw) for r in parsed.rejected] == [1, None, "s", [good]]


@pytest.mark.parametrize("fmt", ["jsonl", "array", "object"])
def test_max_event_bytes(fmt: Format) -> None:
    small, big = make_event(), make_event(description="x" * 2000)
    parsed = parse_body(make_stream_body([small, big], fmt), 1500)
    assert [e.log_id for e in parsed.events] == [small["log_id"]]
    (rejected,) = parsed.rejected
    assert "MAX_EVENT_BYTES" in rejected.reason
    assert b"x" * 2000 in rejected.raw
    alone = parse_body(make_stream_body([big], fmt), 1500)  # rejected alone too, not refused whole
    assert alone.events == []
    assert [(r.position, "MAX_EVENT_BYTES" in r.reason) for r in alone.rejected] == [
        (1 if fmt == "jsonl" and alone.framing == "jsonl" else 0, True)
    ]


# --- to_event -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "log_id"),
    [
        ({"log_id": "top", "data": {"type": "s", "log_id": "inner", "_id": "under"}}, "top"),
        ({"data": {"type": "s", "log_id": "inner", "_id": "under"}}, "inner"),
        ({"data": {"type": "s", "_id": "under"}}, "under"),
        ({"log_id": "bare", "_id": "under", "type": "s", "date": "2026-01-01T00:00:00Z"}, "bare"),
        ({"_id": "under", "type": "s"}, "under"),
        ({"log_id": "  padded  ", "data": {}}, "padded"),
        ({"log_id": 42, "data": {}}, "42"),
        ({"log_id": "", "data": {"log_id": "inner"}}, "inner"),
        ({"log_id": None, "data": {"log_id": "inner"}}, "inner"),
        # An unusable id gives way to the next usable one, as a later copy with the proper id would.
        ({"log_id": "   ", "data": {"log_id": "inner"}}, "inner"),
        ({"log_id": True, "data": {"log_id": 1.5, "_id": "under"}}, "under"),
        ({"log_id": {}, "_id": "under", "type": "s"}, "under"),
    ],
)
def test_id_precedence(item: dict[str, Any], log_id: str) -> None:
    event = to_event(item)
    assert event.log_id == log_id
    assert event.id_generated is False


def test_envelope_is_unwrapped_and_bare_log_kept_whole() -> None:
    inner = make_event()
    assert to_event(envelope(inner)).data == inner
    bare = {**make_event(), "_id": "x"}
    assert to_event(bare).data == bare


def test_a_bare_log_with_a_data_field_is_not_an_envelope() -> None:
    """Some log types carry their own `data` field; with `type`/`date` beside it the item is the log."""
    item = {"log_id": "x", "type": "sapi", "date": "2026-01-01T00:00:00Z", "data": {"log_id": "other"}}
    event = to_event(item)
    assert (event.log_id, event.data) == ("x", item)


@pytest.mark.parametrize(
    "item",
    [
        {"data": {"type": "f", "description": "no id"}},
        {"type": "w"},
        {"log_id": True, "data": {"type": "s"}},
        {"log_id": ["a"], "data": {"type": "s"}},
        {"log_id": "   ", "data": {"type": "s"}},
        {"log_id": 1.5, "data": {"type": "s"}},
    ],
)
def test_no_usable_id_is_a_flagged_content_hash(item: dict[str, Any]) -> None:
    event = to_event(item)
    assert event.id_generated is True
    assert event.log_id.startswith("sha256:")
    assert len(event.log_id) == 7 + 64
    reordered = dict(reversed(list(item.items())))
    assert to_event(reordered).log_id == event.log_id  # key order does not matter
    assert to_event({**item, "extra": 1}).log_id != event.log_id


def test_line_numbers_count_leading_blank_lines() -> None:
    """Line numbers are the sender's: blank lines at the start of the body count too."""
    good = orjson.dumps(envelope(make_event()))
    parsed = parse_body(b"\n\r\n" + good + b"\nbad\n", MAX)
    assert [(r.position, r.raw) for r in parsed.rejected] == [(4, b"bad")]


@pytest.mark.parametrize("depth", [300, 1000])
@pytest.mark.parametrize("fmt", ["jsonl", "array"])
def test_too_deep_to_encode_again_is_rejected(depth: int, fmt: str) -> None:
    """orjson reads 1024 levels but writes only 255: an event the store cannot re-encode is rejected here."""
    good = orjson.dumps(envelope(make_event()))
    deep = b'{"log_id": "deep", "data": {"details": ' + b"[" * depth + b"]" * depth + b"}}"
    body = good + b"\n" + deep if fmt == "jsonl" else b"[" + good + b"," + deep + b"]"
    parsed = parse_body(body, MAX)
    assert parsed.received == 2
    for event in parsed.events:
        orjson.dumps(event.data)  # what app.ingest.to_rows does with every event
    assert len(parsed.rejected) == 1


@pytest.mark.parametrize("framing", ["jsonl", "array", "object"])
def test_too_deep_without_an_id_or_not_an_object_is_rejected_not_raised(framing: str) -> None:
    """Without an id the content is hashed, which needs it encoded: the item is rejected, never an
    exception that would fail the whole body."""
    good = orjson.dumps(envelope(make_event()))
    nested = b"[" * 300 + b"]" * 300
    deep = [b'{"date": "2026-11-23T10:00:00Z", "request": {"body": ' + nested + b"}}", nested]
    if framing == "jsonl":
        body = b"\n".join([good, *deep])
    else:
        items = b"[" + b",".join([good, *deep]) + b"]"
        body = items if framing == "array" else b'{"logs": ' + items + b"}"
    parsed = parse_body(body, MAX)
    assert len(parsed.events) == 1
    assert [orjson.loads(r.raw) for r in parsed.rejected] == [orjson.loads(line) for line in deep]


def test_an_array_item_is_quarantined_as_sent() -> None:
    """Envelope and all, whether the parser or the store refuses it."""
    long_id = {"log_id": "x" * 300, "data": {"type": "s", "log_id": "ignored"}}
    too_big = envelope(make_event(details={"blob": "y" * 2000}))
    parsed = parse_body(orjson.dumps([long_id, too_big]), 1000)
    assert [orjson.loads(r.raw) for r in parsed.rejected] == [too_big]
    rows, refused = to_rows(parsed.events, "stream", datetime.now(UTC))
    assert rows == []
    assert [(r.position, orjson.loads(r.raw)) for r in refused] == [(0, long_id)]


@pytest.mark.parametrize("first_line", [b"[1, 2]", b'["truncated', b"[]"])
def test_json_lines_whose_first_line_is_bad_and_starts_with_a_bracket(first_line: bytes) -> None:
    good = [orjson.dumps(envelope(make_event())) for _ in range(2)]
    parsed = parse_body(b"\n".join([first_line, *good]), MAX)
    assert parsed.framing == "jsonl"
    assert len(parsed.events) == 2
    assert [(r.position, r.raw) for r in parsed.rejected] == [(1, first_line)]


def test_broken_array_names_its_own_position() -> None:
    """A pretty-printed array that breaks is one document: the error gives its line and char."""
    body = b'[\n  {"log_id": "a", "data": {}},\n  {"log_id": "b" "data": {}}\n]\n'
    with pytest.raises(BodyError, match=r"line 3, column 18 \(char 50\)"):
        parse_body(body, MAX)


# --- values orjson cannot hold in a well-formed array ------------------------------------------------

BEYOND = {
    "over-a-double": b"1e400",
    "under-a-double": b"-1e400",
    "a-309-digit-integer": b"9" * 400,
    "nested-past-1024": b"[" * 1100 + b"]" * 1100,
}


@pytest.mark.parametrize("value", BEYOND, ids=list(BEYOND))
@pytest.mark.parametrize("shape", ["array", "page", "pretty-array"])
def test_a_value_orjson_cannot_hold_fails_its_item_alone(value: str, shape: str) -> None:
    """JSON allows any number and any depth; orjson refuses a number beyond a double's range and more
    than 1024 levels. In JSON Lines that fails one line: in an array it must fail one item too, not
    the whole body and every good event in it."""
    good = [envelope(make_event(description='brackets in text: "]}[{," \\" \\\\')), envelope(make_event())]
    bad = b'{"log_id": "odd", "data": {"type": "s", "details": {"n": ' + BEYOND[value] + b"}}}"
    items = [orjson.dumps(good[0]), bad, orjson.dumps(good[1])]
    body = b"[" + b", ".join(items) + b"]"
    if shape == "page":
        body = b'{"start": 0, "logs": ' + body + b', "total": 3}'
    elif shape == "pretty-array":
        body = b"[\n  " + b",\n  ".join(items) + b"\n]\n"
    parsed = parse_body(body, MAX)
    assert parsed.framing == ("object" if shape == "page" else "array")
    assert [e.log_id for e in parsed.events] == [g["log_id"] for g in good]
    assert [e.data for e in parsed.events] == [g["data"] for g in good]
    (rejected,) = parsed.rejected
    assert (rejected.position, rejected.raw) == (1, bad)  # quarantined as sent
    assert "infinity" in rejected.reason or "depth" in rejected.reason


@pytest.mark.parametrize(
    "body",
    [
        b'[{"log_id": "a", "data": {}}, {"n": 1e400}}',  # brackets that do not match
        b'[{"log_id": "a", "data": {}}, {"n": 1e400}, "never ends]',
        b'[{"log_id": "a", "data": {}}, {"n": 1e400}]  [{"log_id": "b", "data": {}}]',
        b'{"log_id": "a", "data": {"n": 1e400}} {"log_id": "b"}',
        b'{"log_id": "a", "data": {"n": 1e400}',
    ],
)
def test_a_broken_document_with_such_a_value_is_still_refused(body: bytes) -> None:
    with pytest.raises(BodyError, match="infinity"):
        parse_body(body, MAX)


@pytest.mark.parametrize(
    "body",
    [
        b'{"log_id": "a", "data": {"n": 1e400}}',  # one event, not a page
        b'{"log_id": "a", "data": {"n": ' + b"[" * 1100 + b"]" * 1100 + b"}}",
        b'{"logs": {"n": 1e400}}',
        b'{"logs": [{"log_id": "a", "data": {}}], "type": "s", "n": 1e400}',
        b'\n{\n  "log_id": "a",\n  "data": {"n": -1e400}\n}\n',
    ],
)
def test_a_single_event_with_such_a_value_is_rejected_as_sent(body: bytes) -> None:
    """As an event with such a value is rejected beside good ones, so it is alone: quarantined."""
    parsed = parse_body(body, MAX)
    assert (parsed.framing, parsed.events) == ("object", [])
    (rejected,) = parsed.rejected
    assert (rejected.position, rejected.raw) == (0, body.strip())
    assert "infinity" in rejected.reason or "depth" in rejected.reason


def test_a_lone_surrogate_follows_the_same_rules_for_numbers_and_depth() -> None:
    """Beside a lone surrogate escape, a number beyond a double was stored as null and a long integer,
    or a depth json could not recurse to, failed the whole body."""
    good = orjson.dumps(envelope(make_event()))
    odd = {
        "beyond": b'{"log_id": "beyond", "data": {"s": "\\ud800", "n": 1e400}}',
        "long": b'{"log_id": "long", "data": {"s": "\\ud800", "n": ' + b"9" * 5000 + b"}}",
        "deep": b'{"log_id": "deep", "data": {"s": "\\udc00", "n": ' + b"[" * 990 + b"]" * 990 + b"}}",
        "kept": b'{"log_id": "kept", "data": {"s": "\\ud800 \\\\ud800 \\ud83d\\ude00 \\udc00", "n": 2}}',
    }
    parsed = parse_body(b"[" + b", ".join([good, *odd.values()]) + b"]", MAX)
    assert [e.log_id for e in parsed.events] == [orjson.loads(good)["log_id"], "kept"]
    assert parsed.events[1].data == {"s": "\ufffd \\ud800 \U0001f600 \ufffd", "n": 2}
    assert [(r.position, r.raw) for r in parsed.rejected] == [
        (1, odd["beyond"]),
        (2, odd["long"]),
        (3, odd["deep"]),
    ]
    assert "infinity" in parsed.rejected[0].reason
    assert "255 levels" in parsed.rejected[2].reason


@pytest.mark.parametrize("framing", ["array", "object"])
def test_an_item_too_deep_for_json_to_write_is_quarantined_as_sent(framing: str) -> None:
    """orjson writes 255 levels and json about 1,000: an item deeper than both was quarantined empty."""
    good = orjson.dumps(envelope(make_event()))
    deep = b'{"log_id": "deep", "data": {"n": ' + b"[" * 1010 + b"]" * 1010 + b"}}"
    items = b"[" + good + b", " + deep + b"]"
    parsed = parse_body(items if framing == "array" else b'{"logs": ' + items + b"}", MAX)
    assert len(parsed.events) == 1
    assert [(r.position, r.raw) for r in parsed.rejected] == [(1, deep)]
    alone = parse_body(b" " + deep, MAX)
    assert [(r.position, r.reason, r.raw) for r in alone.rejected] == [
        (0, "nested more than 255 levels deep", deep)
    ]


def test_events_keep_no_more_memory_than_their_json() -> None:
    """orjson hands back a 4 KiB buffer for a few bytes of JSON; held by each event of a body of tiny
    events, 200,000 of them took about 1 GiB."""
    count = 5000
    body = b"[" + b", ".join(b'{"log_id": "%d"}, %d' % (n, n) for n in range(count)) + b"]"
    tracemalloc.start()
    try:
        parsed = parse_body(body, MAX)
        rows, _ = to_rows(parsed.events, "stream", datetime.now(UTC))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert (len(rows), len(parsed.rejected)) == (count, count)
    assert held / count < 3000, held / count


_EVENT = b'{"log_id": "a", "data": {"type": "s"}}'
_DEEP_IN_PAGE = b"[" * 1021 + b"]" * 1021  # reads alone and in an array, not three levels down a page


@pytest.mark.parametrize(
    "body",
    [
        b"[" + b", ".join([_EVENT, b"1", b'{"log_id": "b"}', b"[2]", b'{"log_id": "a"}']) + b"]",
        b'{"start": 0, "logs": [' + _EVENT + b', 1, {"log_id": "b"}], "total": 3}',
        b"[" + _EVENT + b", 1e400, " + _EVENT.replace(b'"a"', b'"c"') + b"]",
        b"[" + _EVENT + b', {"d": ' + _DEEP_IN_PAGE + b'}, {"log_id": "c"}]',
        b'{"logs": [' + _EVENT + b', {"d": ' + _DEEP_IN_PAGE + b'}, {"log_id": "c"}]}',
        b"[" + _EVENT + b", " + _EVENT + b" " + _EVENT + b"]",  # a comma missing: not an array
        b"[\n" + _EVENT + b",\n" + _EVENT + b"\n" + _EVENT + b"\n]",  # ... which JSON Lines read
        b"[" + _EVENT + b", 1, 2,]",
        b"[" + _EVENT + b", 1\n",
        b"\x0c[" + _EVENT + b"]",  # whitespace to bytes.strip(), not to JSON
        b"[" + _EVENT + b"]\x0c",
        b"[]",
        b" [ ] ",
        b'{"logs": []}',
        b'{"logs": [' + _EVENT + b"], total: 1}",  # the page around the items is broken
        b'{"logs": [' + _EVENT + b'], "logs": 5}',  # a later `logs` wins, as in a dict
        b'{"logs": [1], "logs": [' + _EVENT + b", 2]}",
        b'{"l\\u006fgs": [' + _EVENT + b', {"log_id": "\\ud800"}]}',
        b"[" + _EVENT + b', {"log_id": "x", "s": "\\udc00"}, {"log_id": "y", "s": "\\ud83d\\ude00"}]',
        b'["\\ud800", 1, 2]',
        b"[1, 2, 3]\n",
        b"[1, 2]\n" + _EVENT + b"\n[3]",  # JSON Lines whose first line is an array
        _EVENT + b"\n" + _EVENT + b"\nnot json\n" + _EVENT.replace(b'"a"', b'"z"'),
        b"not json\n\n\r\n1\n" + _EVENT + b"\n",
        b"not json\n\n\r\n1\n",
        b"1\n2\n",
        b"\xef\xbb\xbf" + _EVENT + b"\n" + _EVENT,
        b"[" + _EVENT + b", 1",
        b'{"log_id": "a", "logs": [1, 2, 3]}',
        b'{"log_id": "a", "data": {"n": 1e400}}\n',  # one event orjson cannot hold
        b'{"log_id": "a", "data": {"n": 1e400}',
        b"x\nnot json\n1\n",  # no event, but a line that is JSON
        b"x\n" + b"[" * 2000 + b"\nx\n",  # no line that is JSON
        b"[1, [2], {}]",
    ],
)
@pytest.mark.parametrize("size", [1, 2, 3])
def test_parse_parts_reads_a_body_as_parse_body(body: bytes, size: int) -> None:
    from tests.unit.test_stream_properties import assert_read_in_parts_as_whole

    try:
        whole: Any = parse_body(body, MAX)
    except BodyError as exc:
        whole = str(exc)
    assert_read_in_parts_as_whole(body, size, whole)


def test_parse_parts_holds_no_part_before_the_first_event() -> None:
    """Parts without an event were held until one came: 16 MiB of bad lines took 2 GB. They are read
    again from the start once an event comes."""
    event = orjson.dumps(envelope(make_event()))
    body = b"x\n" * 100_000 + event
    tracemalloc.start()
    try:
        parts = parse_parts(body, MAX, 1000)
        first = next(parts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.position for r in first.rejected] == list(range(1, 1001))  # from the start
    rest = list(parts)
    assert [e.position for e in rest[-1].events] == [100_001]
    assert sum(part.received for part in [first, *rest]) == 100_001
    assert peak < 4 * 1024 * 1024, peak  # a part or two; all of them took over 20 MB
