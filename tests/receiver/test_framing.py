"""Every body framing Auth0 (and the old extensions) send, with every real sample: the framing is read
from the body, never from Content-Type."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api import logs
from tests.conftest import auth
from tests.factories import Format, make_event, make_stream_body
from tests.receiver.support import (
    BODY_FIXTURES,
    all_events,
    expected_data,
    expected_id,
    fixture_bytes,
    fixture_items,
    jsonl,
    stored_ids,
)

Items = list[dict[str, Any]]

FRAMINGS: dict[str, Callable[[Items], bytes]] = {
    "jsonl": lambda items: jsonl(items),
    "jsonl-crlf": lambda items: jsonl(items, b"\r\n"),
    "jsonl-no-trailing-newline": lambda items: jsonl(items).rstrip(b"\n"),
    "jsonl-blank-lines": lambda items: b"\n\n" + b"\n\n  \n".join(orjson.dumps(i) for i in items) + b"\n\n\n",
    "jsonl-bom": lambda items: b"\xef\xbb\xbf" + jsonl(items),
    "jsonl-crlf-blank-lines": lambda items: jsonl(items, b"\r\n\r\n"),
    "array": orjson.dumps,
    "array-pretty": lambda items: orjson.dumps(items, option=orjson.OPT_INDENT_2),
    "array-bom": lambda items: b"\xef\xbb\xbf" + orjson.dumps(items),
    "logs-object": lambda items: orjson.dumps({"logs": items}),
    "logs-object-pretty": lambda items: orjson.dumps({"logs": items}, option=orjson.OPT_INDENT_2),
}


async def assert_stored_exactly(engine: AsyncEngine, items: Items) -> None:
    rows = await all_events(engine)
    assert {r.log_id for r in rows} == {expected_id(i) for i in items}
    by_id = {r.log_id: r for r in rows}
    for item in items:
        row = by_id[expected_id(item)]
        assert row.data == expected_data(item)  # the whole event, unchanged
        assert row.source == "stream"
        assert row.id_generated is False


@pytest.mark.parametrize("name", BODY_FIXTURES)
async def test_fixture_body_as_sent(client: httpx.AsyncClient, engine: AsyncEngine, name: str) -> None:
    count = BODY_FIXTURES[name]
    headers = auth() | {"Content-Type": "application/json"}
    response = await client.post("/api/logs", content=fixture_bytes(name), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": count, "stored": count, "duplicates": 0, "rejected": 0}
    await assert_stored_exactly(engine, fixture_items(name))


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("name", BODY_FIXTURES)
async def test_every_framing_with_every_fixture(
    client: httpx.AsyncClient, engine: AsyncEngine, name: str, framing: str
) -> None:
    items = fixture_items(name)
    body = FRAMINGS[framing](items)
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    n = len(items)
    assert response.json() == {"received": n, "stored": n, "duplicates": 0, "rejected": 0}
    await assert_stored_exactly(engine, items)

    again = await client.post("/api/logs", content=body, headers=auth())
    assert again.json() == {"received": n, "stored": 0, "duplicates": n, "rejected": 0}


@pytest.mark.parametrize("name", BODY_FIXTURES)
async def test_single_event_object_per_request(
    client: httpx.AsyncClient, engine: AsyncEngine, name: str
) -> None:
    items = fixture_items(name)
    for item in items:
        response = await client.post("/api/logs", content=orjson.dumps(item), headers=auth())
        assert response.status_code == 200, response.text
        assert response.json() == {"received": 1, "stored": 1, "duplicates": 0, "rejected": 0}
    await assert_stored_exactly(engine, items)


@pytest.mark.parametrize("framing", ["jsonl", "array", "logs-object"])
@pytest.mark.parametrize("name", BODY_FIXTURES)
async def test_gzip_body(client: httpx.AsyncClient, engine: AsyncEngine, name: str, framing: str) -> None:
    items = fixture_items(name)
    body = gzip.compress(FRAMINGS[framing](items))
    headers = auth() | {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    response = await client.post("/api/logs", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == len(items)
    await assert_stored_exactly(engine, items)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",  # what Auth0 sends with JSON Lines
        None,
        "application/x-ndjson",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
    ],
)
@pytest.mark.parametrize("framing", ["jsonl", "array"])
async def test_content_type_is_ignored(
    client: httpx.AsyncClient, engine: AsyncEngine, content_type: str | None, framing: str
) -> None:
    items = fixture_items("stream_events.jsonl")
    headers = auth() if content_type is None else auth() | {"Content-Type": content_type}
    request = client.build_request("POST", "/api/logs", content=FRAMINGS[framing](items), headers=headers)
    if content_type is None:
        assert "content-type" not in request.headers
    response = await client.send(request)
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == len(items)
    await assert_stored_exactly(engine, items)


async def test_jsonl_line_that_is_an_array_of_events(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """A JSON Lines line must be one object; an array on a line is rejected, not unpacked silently."""
    items = fixture_items("stream_events.jsonl")
    body = orjson.dumps(items[0]) + b"\n" + orjson.dumps(items[1:3]) + b"\n"
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["received"], answer["stored"], answer["rejected"]) == (2, 1, 1)
    assert answer["errors"][0]["line"] == 2
    await assert_stored_exactly(engine, items[:1])


async def test_gzip_encoding_name_any_case(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """Content-Encoding is case-insensitive (`GZIP`, `x-gzip`)."""
    items = fixture_items("stream_body_json_array.json")
    for encoding in ("GZIP", "x-gzip"):
        body = gzip.compress(orjson.dumps(items))
        headers = auth() | {"Content-Encoding": encoding}
        response = await client.post("/api/logs", content=body, headers=headers)
        assert response.status_code == 200, response.text
    await assert_stored_exactly(engine, items)


@pytest.mark.parametrize("encoding", ["identity", "IDENTITY", ""])
async def test_identity_content_encoding(
    client: httpx.AsyncClient, engine: AsyncEngine, encoding: str
) -> None:
    items = fixture_items("stream_body_json_array.json")
    headers = auth() | {"Content-Encoding": encoding}
    response = await client.post("/api/logs", content=orjson.dumps(items), headers=headers)
    assert response.status_code == 200, response.text
    await assert_stored_exactly(engine, items)


@pytest.mark.parametrize("fmt", ["jsonl", "array", "object"])
async def test_large_body(client: httpx.AsyncClient, engine: AsyncEngine, fmt: Format) -> None:
    """A body of a few MB (parsed off the event loop) stores every event once."""
    events = [make_event(details={"padding": "p" * 400}) for _ in range(3000)]
    body = make_stream_body(events, fmt)
    assert len(body) > 1024 * 1024
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"received": 3000, "stored": 3000, "duplicates": 0, "rejected": 0}
    assert await stored_ids(engine) == {e["log_id"] for e in events}


async def test_gzip_with_several_members(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """A gzip body may hold several members (RFC 1952 2.2; `cat a.gz b.gz`, streaming compressors);
    `gzip -d` reads them all, so the receiver must too, or refuse: never drop the rest in silence."""
    items = fixture_items("stream_events.jsonl")
    body = gzip.compress(jsonl(items[:6])) + gzip.compress(jsonl(items[6:]))
    assert gzip.decompress(body) == jsonl(items)
    response = await client.post("/api/logs", content=body, headers=auth() | {"Content-Encoding": "gzip"})
    if response.status_code == 200:
        assert response.json()["received"] == len(items), response.text
        await assert_stored_exactly(engine, items)
    else:
        assert response.status_code == 400, response.text
        assert await stored_ids(engine) == set()


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize(
    ("events", "gzipped", "on_loop"),
    [(10, False, True), (10, True, False), (600, False, False)],
    ids=["small", "small-gzip", "over-256-KiB"],
)
async def test_a_large_or_gzip_body_is_parsed_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    events: int,
    gzipped: bool,
    on_loop: bool,
) -> None:
    """Parsing a body and making its rows run on a thread when the body is large, or gzip (which may
    inflate to MAX_BODY_BYTES whatever its own size), so that the event loop serves other requests
    meanwhile; a small body is handled inline."""
    where: dict[str, bool] = {}

    def spy(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            where[name] = _on_event_loop()
            return function(*args, **kwargs)

        return record

    monkeypatch.setattr(logs, "parse_body", spy("parse", logs.parse_body))
    monkeypatch.setattr(logs, "parse_parts", spy("parse", logs.parse_parts))  # a body over 256 KiB
    monkeypatch.setattr(logs, "to_rows", spy("rows", logs.to_rows))
    sent = [make_event(description="x" * 600) for _ in range(events)]
    body = make_stream_body(sent, gzipped=gzipped)
    assert (len(body) > 256 * 1024) == (events == 600)
    headers = auth() | ({"Content-Encoding": "gzip"} if gzipped else {})
    response = await client.post("/api/logs", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == events
    assert len(await stored_ids(engine)) == events
    assert where == {"parse": on_loop, "rows": on_loop}
