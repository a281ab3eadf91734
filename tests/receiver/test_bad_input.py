"""Bad input gets a clear 4xx (or 200 with the bad part quarantined), never a 500, and nothing good
is lost."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Callable
from random import Random
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from tests.conftest import INGEST_TOKEN, READ_TOKEN, auth, bearer, is_postgres, status_line_without_the_body
from tests.factories import Format, envelope, make_event, make_stream_body
from tests.receiver.support import count_events, get_event, quarantined, stored_ids

LIMIT = 8192


@pytest.fixture
async def small(
    make_settings: Callable[..., Settings], start_server: Callable[..., Any]
) -> AsyncIterator[httpx.AsyncClient]:
    """A server with MAX_BODY_BYTES=8192 and MAX_EVENT_BYTES=2048."""
    live = await start_server(make_settings(max_body_bytes=LIMIT, max_event_bytes=2048))
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
        yield client


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"error", "detail"}
    detail = str(answer["detail"])
    for word in words:
        assert word.lower() in detail.lower(), (word, detail)
    return detail


# --- size limits ----------------------------------------------------------------------------------


async def test_body_over_limit_with_content_length(small: httpx.AsyncClient, engine: AsyncEngine) -> None:
    events = [make_event() for _ in range(60)]
    body = make_stream_body(events, "jsonl")
    assert len(body) > LIMIT
    response = await small.post("/api/logs", content=body, headers=auth())
    assert_error(response, 413, "MAX_BODY_BYTES")
    assert response.json()["error"] == "payload_too_large"
    assert await count_events(engine) == 0


async def test_declared_length_over_limit_is_refused_before_the_body(small: httpx.AsyncClient) -> None:
    """With Content-Length over the limit the answer comes at once: the receiver waits for no body."""
    headers = {"Authorization": INGEST_TOKEN, "Content-Type": "application/json"}
    status_line = await status_line_without_the_body(str(small.base_url), "/api/logs", headers)
    assert status_line.split()[1] == b"413", status_line


async def test_body_just_under_limit_is_fine(small: httpx.AsyncClient, engine: AsyncEngine) -> None:
    events = [make_event() for _ in range(10)]
    body = make_stream_body(events, "jsonl")
    body += b" " * (LIMIT - len(body))
    assert len(body) == LIMIT
    response = await small.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    assert await count_events(engine) == 10


async def test_chunked_body_over_limit(small: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """No Content-Length: the receiver counts while it reads and stops at the limit."""
    line = orjson.dumps(envelope(make_event())) + b"\n"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4 * LIMIT // len(line)):
            yield line

    request = small.build_request("POST", "/api/logs", content=chunks(), headers=auth())
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = await small.send(request)
    assert_error(response, 413, "MAX_BODY_BYTES")
    assert await count_events(engine) == 0


async def test_chunked_body_under_limit_is_stored(small: httpx.AsyncClient, engine: AsyncEngine) -> None:
    events = [make_event() for _ in range(5)]

    async def chunks() -> AsyncIterator[bytes]:
        for event in events:
            yield orjson.dumps(envelope(event)) + b"\n"

    response = await small.post("/api/logs", content=chunks(), headers=auth())
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 5


async def test_gzip_that_inflates_beyond_the_limit(small: httpx.AsyncClient, engine: AsyncEngine) -> None:
    bomb = gzip.compress(b"[" + b" " * (LIMIT * 50) + b"]")
    assert len(bomb) < LIMIT
    response = await small.post("/api/logs", content=bomb, headers=auth() | {"Content-Encoding": "gzip"})
    assert_error(response, 413, "MAX_BODY_BYTES")
    assert await count_events(engine) == 0


async def test_gzip_of_real_events_beyond_the_limit(small: httpx.AsyncClient, engine: AsyncEngine) -> None:
    body = make_stream_body([make_event() for _ in range(200)], "array", gzipped=True)
    assert len(body) < LIMIT
    response = await small.post("/api/logs", content=body, headers=auth() | {"Content-Encoding": "gzip"})
    assert_error(response, 413)
    assert await count_events(engine) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"this is not gzip at all",
        gzip.compress(b'[{"log_id": "x", "data": {}}]')[:-12],  # truncated
        b"\x1f\x8b\x08\x00garbage-after-magic",
        b"",
    ],
    ids=["not-gzip", "truncated", "bad-after-magic", "empty"],
)
async def test_corrupt_gzip(client: httpx.AsyncClient, engine: AsyncEngine, body: bytes) -> None:
    response = await client.post("/api/logs", content=body, headers=auth() | {"Content-Encoding": "gzip"})
    assert_error(response, 400)
    assert await count_events(engine) == 0


async def test_gzip_zero_padding_is_read_and_trailing_garbage_named(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Zero bytes after a gzip member are padding (`gzip -d` and Python's gzip module skip them);
    anything else after it is refused, naming where the gzip data stops."""
    headers = auth() | {"Content-Encoding": "gzip"}
    event = make_event()
    member = gzip.compress(make_stream_body([event]))
    response = await client.post("/api/logs", content=member + bytes(512), headers=headers)
    assert response.status_code == 200, response.text
    assert await stored_ids(engine) == {event["log_id"]}

    padded_garbage = member + bytes(3) + b"not gzip"
    detail = assert_error(await client.post("/api/logs", content=padded_garbage, headers=headers), 400)
    assert f"not valid gzip from byte {len(member) + 3} on" in detail, detail
    assert await count_events(engine) == 1


async def test_gzip_of_many_members_is_read_whole(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """Thousands of small members, zero padding between some, and members larger than what the
    receiver feeds zlib at once: every line of every member is read, in order."""
    random = Random(7)
    small = [make_event() for _ in range(5000)]
    large = [make_event(description=random.randbytes(300).hex()) for _ in range(2000)]
    members = [gzip.compress(make_stream_body([event]), mtime=0) for event in small[:2500]]
    members.append(gzip.compress(make_stream_body(large), mtime=0))
    members += [
        gzip.compress(make_stream_body([event]), mtime=0) + bytes(n % 3)
        for n, event in enumerate(small[2500:])
    ]
    assert len(members[2500]) > 512 * 1024
    body = b"".join(members)
    response = await client.post("/api/logs", content=body, headers=auth() | {"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert (response.json()["received"], response.json()["stored"]) == (7000, 7000)
    assert await stored_ids(engine) == {event["log_id"] for event in small + large}


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "zstd", "gzip, br", "identity, zstd"])
async def test_unsupported_content_encoding(client: httpx.AsyncClient, encoding: str) -> None:
    body = make_stream_body([make_event()])
    response = await client.post("/api/logs", content=body, headers=auth() | {"Content-Encoding": encoding})
    assert_error(response, 415, "gzip")


@pytest.mark.parametrize(
    ("fields", "times"),
    [
        (["gzip, identity"], 1),
        (["identity, GZIP"], 1),
        (["x-gzip ,,"], 1),  # an empty element is ignored
        (["identity"], 0),
        (["gzip, gzip"], 2),  # gzipped twice, listed in the order applied
        (["gzip", "gzip"], 2),  # the same list over two fields
    ],
)
async def test_content_encoding_is_a_list_of_codings(
    client: httpx.AsyncClient, engine: AsyncEngine, fields: list[str], times: int
) -> None:
    """RFC 9110 8.4: the codings applied, in order, comma-separated; identity is none. `gzip, identity`
    was a 415."""
    event = make_event()
    body = make_stream_body([event])
    for _ in range(times):
        body = gzip.compress(body)
    headers = [("Authorization", INGEST_TOKEN), *(("Content-Encoding", field) for field in fields)]
    response = await client.post("/api/logs", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert await stored_ids(engine) == {event["log_id"]}


# --- nothing parseable ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"", "empty"),
        (b"   \n\r\n  \n", "empty"),
        (b"not json", "char"),
        (b'{"log_id": "x", "data": {', "char"),
        (b"not json\nstill not\n", "line 1"),
        (b'\n\n{"broken": \n', "line"),
        (b'[{"log_id": "a"}, ', "char"),
    ],
)
async def test_nothing_parseable_is_400_naming_where(
    client: httpx.AsyncClient, engine: AsyncEngine, body: bytes, where: str
) -> None:
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 400, response.text
    assert_error(response, 400, where)
    assert await count_events(engine) == 0


async def test_parse_error_position_is_of_the_body_as_sent(client: httpx.AsyncClient) -> None:
    """The JSON breaks at the sender's line 3, char 12 (0-based): the answer must say so."""
    response = await client.post("/api/logs", content=b'\n\n{"broken" 1}\n', headers=auth())
    detail = assert_error(response, 400)
    assert "line 3" in detail, detail
    assert "char 12" in detail, detail


@pytest.mark.parametrize("first_line", [b"[1, 2]", b'["truncated', b"[]"])
async def test_bad_first_line_that_looks_like_an_array(
    client: httpx.AsyncClient, engine: AsyncEngine, first_line: bytes
) -> None:
    """One bad line among good ones loses none of the good ones, even when it is the first line."""
    good = [make_event(), make_event()]
    body = first_line + b"\n" + b"\n".join(orjson.dumps(envelope(e)) for e in good) + b"\n"
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["stored"], answer["rejected"]) == (2, 1)
    assert answer["errors"][0]["line"] == 1
    assert await stored_ids(engine) == {e["log_id"] for e in good}
    assert [r.raw for r in await quarantined(engine)] == [first_line]


@pytest.mark.parametrize("body", [b"[]", b'{"logs": []}', b"[]\n"])
async def test_empty_batch_is_a_no_op(client: httpx.AsyncClient, engine: AsyncEngine, body: bytes) -> None:
    """A well-formed batch of no events is not an error: nothing to store, nothing to retry."""
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 0, "stored": 0, "duplicates": 0, "rejected": 0}
    assert await count_events(engine) == 0


@pytest.mark.parametrize("body", [b"42", b'"a string"', b"true", b"null", b"-1.5e3"])
async def test_top_level_scalar(client: httpx.AsyncClient, body: bytes) -> None:
    assert_error(await client.post("/api/logs", content=body, headers=auth()), 400)


# --- some bad lines among good ones ---------------------------------------------------------------


async def test_bad_lines_among_good_are_quarantined_verbatim(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    good = [make_event() for _ in range(4)]
    bad = [b'{"log_id": "broken", "data": {', b"plain text, not JSON", b'"a string"', b"[1, 2]"]
    lines = [
        orjson.dumps(envelope(good[0])),
        bad[0],
        orjson.dumps(envelope(good[1])),
        b"",
        bad[1],
        orjson.dumps(envelope(good[2])),
        bad[2],
        bad[3],
        orjson.dumps(envelope(good[3])),
    ]
    body = b"\r\n".join(lines) + b"\r\n"
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["received"] == 8
    assert (answer["stored"], answer["duplicates"], answer["rejected"]) == (4, 0, 4)
    assert answer["quarantined"] == 4
    assert [e["line"] for e in answer["errors"]] == [2, 5, 7, 8]
    assert all(e["reason"] for e in answer["errors"])
    assert await stored_ids(engine) == {e["log_id"] for e in good}

    rows = await quarantined(engine)
    assert [r.raw for r in rows] == bad
    assert [r.line_no for r in rows] == [2, 5, 7, 8]
    assert all(r.source == "stream" and r.reason and r.received_at for r in rows)


async def test_done_when_one_bad_line_loses_nothing(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    good = [make_event() for _ in range(50)]
    lines = [orjson.dumps(envelope(e)) for e in good]
    bad_line = b'{"log_id": "900xyz", "data": {"type": "f", oops}}'
    lines.insert(25, bad_line)
    response = await client.post("/api/logs", content=b"\n".join(lines), headers=auth())
    assert response.status_code == 200
    assert response.json()["errors"] == [{"line": 26, "reason": response.json()["errors"][0]["reason"]}]
    assert await count_events(engine) == 50
    (row,) = await quarantined(engine)
    assert row.raw == bad_line


async def test_line_numbers_count_leading_blank_lines(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """The answer and the quarantine name the sender's line, even after blank lines at the start."""
    good = orjson.dumps(envelope(make_event()))
    body = b"\r\n\r\n" + good + b"\r\nnot json\r\n"
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    assert [e["line"] for e in response.json()["errors"]] == [4]
    (row,) = await quarantined(engine)
    assert (row.line_no, row.raw) == (4, b"not json")


async def test_invalid_utf8_line_among_good_lines(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    good = [make_event(), make_event()]
    bad_line = b'{"log_id": "bad-utf8", "data": {"user_name": "caf\xe9 \xff\xfe"}}'
    body = orjson.dumps(envelope(good[0])) + b"\n" + bad_line + b"\n" + orjson.dumps(envelope(good[1]))
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["stored"], answer["rejected"]) == (2, 1)
    assert answer["errors"][0]["line"] == 2
    (row,) = await quarantined(engine)
    assert row.raw == bad_line


@pytest.mark.parametrize(
    "body",
    [
        b'{"log_id": "x", "data": {"user_name": "\xff\xfe\xfd"}}',
        b'[{"log_id": "x", "data": {"type": "\xc3\x28"}}]',
        b"\xff\xfe[\x00{\x00",  # UTF-16 with its BOM
        b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate
    ],
)
async def test_invalid_utf8_whole_body(client: httpx.AsyncClient, engine: AsyncEngine, body: bytes) -> None:
    assert_error(await client.post("/api/logs", content=body, headers=auth()), 400)
    assert await count_events(engine) == 0


@pytest.mark.parametrize("framing", ["jsonl", "array"])
async def test_lone_surrogate_escape_is_stored_as_a_replacement_character(
    client: httpx.AsyncClient, engine: AsyncEngine, framing: str
) -> None:
    # JSON allows "\ud800" alone (JavaScript writes one for half an emoji); UTF-8 text cannot hold it.
    good = make_event()
    odd = b'{"log_id": "s", "data": {"user_name": "x\\ud800y", "details": {"k": "\\udc00"}}}'
    good_json = orjson.dumps(envelope(good))
    body = good_json + b"\n" + odd if framing == "jsonl" else b"[" + good_json + b"," + odd + b"]"
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    assert (response.json()["stored"], response.json()["rejected"]) == (2, 0)
    assert await stored_ids(engine) == {good["log_id"], "s"}
    response = await client.get("/api/events/s", headers=bearer(READ_TOKEN))
    assert response.json()["user_name"] == "x\ufffdy"
    assert response.json()["data"]["details"] == {"k": "\ufffd"}


# --- items that are not objects -------------------------------------------------------------------


async def test_non_objects_in_an_array_among_good_items(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    good = [make_event(), make_event()]
    body = orjson.dumps([envelope(good[0]), 1, "text", None, [envelope(good[1])], envelope(good[1]), True])
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["received"] == 7
    assert (answer["stored"], answer["rejected"]) == (2, 5)
    assert [e["item"] for e in answer["errors"]] == [1, 2, 3, 4, 6]
    assert await stored_ids(engine) == {e["log_id"] for e in good}
    assert [orjson.loads(r.raw) for r in await quarantined(engine)] == [
        1,
        "text",
        None,
        [envelope(good[1])],
        True,
    ]


@pytest.mark.parametrize("body", [b"[1, 2]", b'["a", "b"]', b"[null]", b'{"logs": [1, "x"]}', b"[[{}]]"])
async def test_only_non_objects_are_quarantined(
    client: httpx.AsyncClient, engine: AsyncEngine, body: bytes
) -> None:
    """Items that are not events are rejected one by one, with or without an event beside them."""
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    items = orjson.loads(body)
    items = items["logs"] if isinstance(items, dict) else items
    assert [error["item"] for error in response.json()["errors"]] == list(range(len(items)))
    assert await count_events(engine) == 0
    assert [orjson.loads(row.raw) for row in await quarantined(engine)] == items


# --- deep and huge values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b"\n".join([b"[" * 100_000] * 3),
        b'{"a":' * 50_000 + b"1" + b"}" * 50_001,
    ],
    ids=["open-brackets", "lines-of-brackets", "one-bracket-too-many"],
)
async def test_absurdly_deep_brackets_that_do_not_match_are_400(
    client: httpx.AsyncClient, engine: AsyncEngine, body: bytes
) -> None:
    assert_error(await client.post("/api/logs", content=body, headers=auth()), 400)
    assert await count_events(engine) == 0


@pytest.mark.parametrize("depth", [300, 600, 1000])
@pytest.mark.parametrize("fmt", ["jsonl", "array"])
async def test_deep_event_among_good_ones_is_never_500(
    client: httpx.AsyncClient, engine: AsyncEngine, depth: int, fmt: str
) -> None:
    """An event nested a few hundred levels deep parses, but is more than the store can re-encode."""
    good = make_event()
    deep_line = b'{"log_id": "deep", "data": {"type": "f", "details": ' + b"[" * depth + b"]" * depth + b"}}"
    if fmt == "jsonl":
        body = orjson.dumps(envelope(good)) + b"\n" + deep_line + b"\n"
    else:
        body = b"[" + orjson.dumps(envelope(good)) + b"," + deep_line + b"]"
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text  # not a 500, nor a 400 that loses the good one
    answer = response.json()
    where = "line" if fmt == "jsonl" else "item"
    assert answer["errors"] == [
        {where: 1 if fmt == "array" else 2, "reason": "nested more than 255 levels deep"}
    ]
    assert (answer["received"], answer["stored"], answer["rejected"]) == (2, 1, 1)
    assert await stored_ids(engine) == {good["log_id"]}
    [row] = await quarantined(engine)
    assert row.raw == deep_line  # at 1000 levels json cannot write it again either: kept as sent


async def test_deep_item_without_an_id_is_rejected_alone(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The extensions' payloads have no id, so they are keyed by a hash of their content: one too deep
    to hash is named and quarantined, and the good item beside it is stored (it was a 500 for both)."""
    good = make_event()
    nested = b"[" * 300 + b"]" * 300
    deep = b'{"date": "2026-11-23T10:00:00Z", "request": {"body": {"app_metadata": ' + nested + b"}}}"
    body = b"[" + orjson.dumps(envelope(good)) + b"," + deep + b"]"
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    assert response.json()["errors"] == [{"item": 1, "reason": "nested more than 255 levels deep"}]
    assert await stored_ids(engine) == {good["log_id"]}
    assert [orjson.loads(r.raw) for r in await quarantined(engine)] == [orjson.loads(deep)]


BEYOND = {
    "1e400": b"1e400",
    "-1e400": b"-1e400",
    "400-digits": b"9" * 400,
    "depth-1100": b"[" * 1100 + b"]" * 1100,
}


@pytest.mark.parametrize("value", BEYOND)
@pytest.mark.parametrize("fmt", ["jsonl", "array", "object"])
async def test_a_value_orjson_cannot_hold_fails_only_its_item(
    client: httpx.AsyncClient, engine: AsyncEngine, value: str, fmt: str
) -> None:
    """A number beyond a double's range or nesting past 1024 levels is valid JSON that orjson refuses:
    it failed the whole array or page (a 400 that lost every good event in it), one line in JSON Lines."""
    good = [make_event(), make_event()]
    bad = b'{"log_id": "odd", "data": {"type": "f", "details": {"n": ' + BEYOND[value] + b"}}}"
    lines = [orjson.dumps(envelope(good[0])), bad, orjson.dumps(envelope(good[1]))]
    body = b"\n".join(lines) + b"\n" if fmt == "jsonl" else b"[" + b",".join(lines) + b"]"
    if fmt == "object":
        body = b'{"logs": ' + body + b"}"
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["received"], answer["stored"], answer["rejected"]) == (3, 2, 1)
    (error,) = answer["errors"]
    assert error.get("line") == 2 if fmt == "jsonl" else error.get("item") == 1, error
    assert "infinity" in error["reason"] or "depth" in error["reason"], error
    assert await stored_ids(engine) == {e["log_id"] for e in good}
    assert [r.raw for r in await quarantined(engine)] == [bad]


async def test_huge_value_over_max_event_bytes(small: httpx.AsyncClient, engine: AsyncEngine) -> None:
    good = make_event()
    huge = make_event(description="x" * 3000)  # MAX_EVENT_BYTES is 2048 here
    for fmt in ("jsonl", "array", "object"):
        body = make_stream_body([good, huge], fmt)
        response = await small.post("/api/logs", content=body, headers=auth())
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["rejected"] == 1, answer
        assert "MAX_EVENT_BYTES" in answer["errors"][0]["reason"]
    assert await stored_ids(engine) == {good["log_id"]}
    rows = await quarantined(engine)
    assert len(rows) == 3
    assert all(b"x" * 3000 in r.raw for r in rows)


POISON = {
    "over-max-event-bytes": orjson.dumps(envelope(make_event(description="y" * 5000))),
    "1e400": b'{"log_id": "odd", "data": {"type": "f", "n": 1e400}}',
    "nested-300": b'{"log_id": "deep", "data": {"d": ' + b"[" * 300 + b"]" * 300 + b"}}",
    "nested-100000": b'{"log_id": "deep", "data": {"d": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
    "nested-objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
}


@pytest.mark.parametrize("framing", ["jsonl", "array", "alone"])
@pytest.mark.parametrize("poison", POISON)
async def test_an_event_no_good_one_comes_with_is_quarantined_as_beside_one(
    make_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    engine: AsyncEngine,
    poison: str,
    framing: str,
) -> None:
    """An event too large, with a number beyond a double or nested too deep was a 400 sent alone, and
    not quarantined; beside a good one, a 200 that quarantined it. Auth0 resends what is not a 2xx
    again and again, so alone too it is rejected, listed and quarantined, with a 200."""
    event = POISON[poison]
    body = {"jsonl": event + b"\n" + event + b"\n", "array": b"[" + event + b"]", "alone": event}[framing]
    live = await start_server(make_settings(max_event_bytes=2048))
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
        response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    answer = response.json()
    count = 2 if framing == "jsonl" else 1
    assert (answer["received"], answer["stored"], answer["rejected"]) == (count, 0, count)
    assert [error.get("line", error.get("item")) for error in answer["errors"]] == (
        [1, 2] if framing == "jsonl" else [0]
    )
    assert await count_events(engine) == 0
    assert [row.raw for row in await quarantined(engine)] == [event] * count


# --- values the database cannot hold --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "array", "object"])
async def test_nul_character_is_quarantined(
    client: httpx.AsyncClient, engine: AsyncEngine, fmt: Format
) -> None:
    good = make_event()
    with_nul = make_event(user_name="nul\u0000inside", details={"k\u0000": "v"})
    response = await client.post("/api/logs", content=make_stream_body([good, with_nul], fmt), headers=auth())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["received"], answer["stored"], answer["rejected"]) == (2, 1, 1)
    assert await stored_ids(engine) == {good["log_id"]}
    (row,) = await quarantined(engine)
    assert b"\\u0000" in row.raw
    assert "NUL" in row.reason


async def test_backslash_u0000_text_is_not_a_nul(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    r"""In JSON, `\\u0000` is a backslash and the text u0000, which any database holds, and
    `\\\u0000` is a backslash and a NUL."""
    text = make_event(description="C:\\u0000 and \\\\u0000")
    nul = make_event(description="\\\u0000")
    response = await client.post("/api/logs", content=make_stream_body([text, nul], "jsonl"), headers=auth())
    assert response.status_code == 200, response.text
    assert (response.json()["stored"], response.json()["rejected"]) == (1, 1)
    assert await stored_ids(engine) == {text["log_id"]}


async def test_nul_event_is_reported_by_its_line(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """In JSON Lines, an event the database cannot hold is named by its line, like any bad line."""
    lines = [
        orjson.dumps(envelope(make_event())),
        b"not json",
        orjson.dumps(envelope(make_event(description="nul \u0000 here"))),
    ]
    response = await client.post("/api/logs", content=b"\n".join(lines), headers=auth())
    assert response.status_code == 200, response.text
    assert [e.get("line") for e in response.json()["errors"]] == [2, 3]
    assert [(r.line_no, r.raw) for r in await quarantined(engine)] == [(2, lines[1]), (3, lines[2])]


async def test_nul_in_the_envelope_log_id(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """A NUL in the id alone (not in `data`) must not reach PostgreSQL either."""
    good = make_event()
    event = make_event()
    body = orjson.dumps([envelope(good), {"log_id": "id\u0000nul", "data": event}])
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code < 500, response.text
    assert good["log_id"] in await stored_ids(engine)


async def test_nul_only_event_is_not_500(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    body = orjson.dumps([envelope(make_event(description="\u0000"))])
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code in (200, 400), response.text
    assert await count_events(engine) == 0
    assert len(await quarantined(engine)) == (1 if response.status_code == 200 else 0)


async def test_overlong_user_name_is_stored_with_a_cut_copy(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    name = "n" * 10_000
    wide = "\U0001f600" * 10_000  # 4 bytes each in UTF-8: checks the index entry size on PostgreSQL
    events = [
        make_event(user_name=name, description=name, client_name=name),
        make_event(user_name=wide, description=wide, user_id=wide, connection=wide, ip=wide),
    ]
    response = await client.post("/api/logs", content=make_stream_body(events), headers=auth())
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 2
    first = await get_event(engine, events[0]["log_id"])
    assert first.data["user_name"] == name  # whole in `data`
    assert first.user_name
    assert name.startswith(first.user_name)
    assert len(first.user_name) < len(name)
    second = await get_event(engine, events[1]["log_id"])
    assert second.data["user_name"] == wide
    assert second.user_name
    assert wide.startswith(second.user_name)


async def test_overlong_type_is_not_500(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    good = make_event()
    odd = make_event(type="t" * 500)
    response = await client.post("/api/logs", content=make_stream_body([good, odd]), headers=auth())
    assert response.status_code < 500, response.text
    assert good["log_id"] in await stored_ids(engine)


async def test_overlong_log_id_is_not_500(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    good = make_event()
    odd = make_event(log_id="9" * 1000)
    response = await client.post("/api/logs", content=make_stream_body([good, odd]), headers=auth())
    assert response.status_code < 500, response.text
    assert good["log_id"] in await stored_ids(engine)


@pytest.mark.parametrize("date", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01"])
async def test_extreme_dates_are_not_500(client: httpx.AsyncClient, engine: AsyncEngine, date: str) -> None:
    good = make_event()
    odd = make_event(date=date)
    response = await client.post("/api/logs", content=make_stream_body([good, odd]), headers=auth())
    assert response.status_code < 500, response.text
    assert good["log_id"] in await stored_ids(engine)


async def test_a_bad_request_does_not_spoil_others(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """After every kind of bad body, the receiver still stores good ones."""
    for body in (b"[" * 100_000, b"\xff", b"42", b"[1]"):
        await client.post("/api/logs", content=body, headers=auth())
    event = make_event()
    response = await client.post("/api/logs", content=make_stream_body([event]), headers=auth())
    assert response.json()["stored"] == 1
    row = await get_event(engine, event["log_id"])
    assert row.source == "stream"
    assert not is_postgres() or row.data == event
