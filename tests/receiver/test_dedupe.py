"""Each event is stored once: within a request, across requests, formats and sources, and under
concurrent requests. A duplicate is counted, never an error."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth0.stream.event import to_event
from app.ingest import Batch, insert_events, store_batches, to_rows
from tests.conftest import auth
from tests.factories import envelope, make_event, make_stream_body
from tests.receiver.support import count_events, fixture_items, get_event, jsonl, stored_ids


async def post(client: httpx.AsyncClient, body: bytes, **headers: str) -> dict[str, Any]:
    response = await client.post("/api/logs", content=body, headers=auth() | headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_done_when_formats_then_again_are_stored_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The issue's "Done when": JSON Lines, array and object, then all again: stored once."""
    events = [make_event() for _ in range(7)]
    answers = []
    for _ in range(2):
        for fmt in ("jsonl", "array", "object"):
            answers.append(await post(client, make_stream_body(events, fmt)))
        answers.append(
            await post(
                client, make_stream_body(events, "jsonl", gzipped=True), **{"Content-Encoding": "gzip"}
            )
        )
    assert answers[0] == {"received": 7, "stored": 7, "duplicates": 0, "rejected": 0}
    assert all(a == {"received": 7, "stored": 0, "duplicates": 7, "rejected": 0} for a in answers[1:])
    assert await stored_ids(engine) == {e["log_id"] for e in events}


async def test_within_one_request(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    a, b = make_event(), make_event()
    body = make_stream_body([a, b, a, a, b], "jsonl")
    assert await post(client, body) == {"received": 5, "stored": 2, "duplicates": 3, "rejected": 0}
    assert await count_events(engine) == 2


async def test_within_one_request_envelope_and_bare(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """The same log as a stream envelope and as a bare Management API item is one event."""
    item = fixture_items("mgmt_api_logs.json")[1]
    body = orjson.dumps([{"log_id": item["log_id"], "data": item}, item])
    assert await post(client, body) == {"received": 2, "stored": 1, "duplicates": 1, "rejected": 0}
    assert await count_events(engine) == 1


async def test_across_requests_keeps_the_first_copy(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    first = make_event(description="first copy")
    second = {**first, "description": "second copy"}  # same log id, other content
    assert (await post(client, make_stream_body([first], "array")))["stored"] == 1
    assert await post(client, make_stream_body([second], "object")) == {
        "received": 1,
        "stored": 0,
        "duplicates": 1,
        "rejected": 0,
    }
    row = await get_event(engine, first["log_id"])
    assert row.data["description"] == "first copy"


async def test_partial_overlap(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    events = [make_event() for _ in range(10)]
    await post(client, make_stream_body(events[:6], "jsonl"))
    assert await post(client, make_stream_body(events[3:], "array")) == {
        "received": 7,
        "stored": 4,
        "duplicates": 3,
        "rejected": 0,
    }
    assert await count_events(engine) == 10


async def test_across_sources_poller_first(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    item = fixture_items("mgmt_api_logs.json")[2]
    rows, rejected = to_rows([to_event(item)], "poller", datetime.now(UTC))
    async with engine.begin() as conn:
        (result,) = await conn.run_sync(store_batches, [Batch(rows, rejected, "poller", datetime.now(UTC))])
    assert (result.stored, result.duplicates) == (1, 0)

    stream_copy = {"log_id": item["log_id"], "data": {k: v for k, v in item.items() if k != "_id"}}
    assert await post(client, jsonl([stream_copy])) == {
        "received": 1,
        "stored": 0,
        "duplicates": 1,
        "rejected": 0,
    }
    row = await get_event(engine, item["log_id"])
    assert row.source == "poller"
    assert await count_events(engine) == 1


async def test_across_sources_stream_first(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    event = make_event()
    await post(client, make_stream_body([event], "jsonl"))
    rows, _ = to_rows([to_event(event)], "poller", datetime.now(UTC))
    async with engine.begin() as conn:
        (result,) = await conn.run_sync(store_batches, [Batch(rows, [], "poller", datetime.now(UTC))])
    assert (result.received, result.stored, result.duplicates) == (1, 0, 1)
    assert (await get_event(engine, event["log_id"])).source == "stream"


async def test_concurrent_overlapping_requests(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    pool = [make_event() for _ in range(120)]
    rng = random.Random(2)
    bodies = []
    sent = 0
    for i in range(60):
        chosen = rng.sample(pool, rng.randint(1, 40))
        sent += len(chosen)
        bodies.append(make_stream_body(chosen, ("jsonl", "array", "object")[i % 3]))
    # Every event is in at least one body.
    bodies.append(make_stream_body(pool, "jsonl"))
    sent += len(pool)

    answers = await asyncio.gather(*(post(client, body) for body in bodies))
    assert sum(a["received"] for a in answers) == sent
    assert sum(a["stored"] for a in answers) == len(pool)
    assert sum(a["duplicates"] for a in answers) == sent - len(pool)
    assert all(a["received"] == a["stored"] + a["duplicates"] for a in answers)
    assert await stored_ids(engine) == {e["log_id"] for e in pool}


async def test_concurrent_identical_requests(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """Auth0 retries: the same body many times at once is stored once."""
    events = [make_event() for _ in range(25)]
    body = jsonl([envelope(e) for e in events])
    answers = await asyncio.gather(*(post(client, body) for _ in range(30)))
    assert sum(a["stored"] for a in answers) == 25
    assert sum(a["duplicates"] for a in answers) == 25 * 29
    assert await count_events(engine) == 25


async def test_store_returns_exactly_the_new_ids(engine: AsyncEngine) -> None:
    """insert_events reports the ids it inserted, and only those, when old and new ids are mixed
    within one statement and across statements (a statement holds at most 1,000 rows)."""
    events = [make_event() for _ in range(2500)]
    now = datetime.now(UTC)
    old = events[:100] + events[1200:1300] + events[2400:]
    rows, _ = to_rows([to_event(e) for e in old], "stream", now)
    async with engine.begin() as conn:
        first = await conn.run_sync(insert_events, rows)
    assert first == {e["log_id"] for e in old}

    rows, _ = to_rows([to_event(e) for e in events], "stream", now)
    rows.sort(key=lambda row: row["log_id"])  # as store_batches orders them
    async with engine.begin() as conn:
        second = await conn.run_sync(insert_events, rows)
    assert second == {e["log_id"] for e in events} - first
    async with engine.begin() as conn:
        assert await conn.run_sync(insert_events, rows) == set()
    assert await count_events(engine) == 2500


async def test_ids_that_are_one_after_normalising_are_one_event(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Ids are stripped (Unicode spaces too) and numbers read as text: these are two events, each
    kept as its first copy in the body, the same id with other content a duplicate."""
    items = [
        {"log_id": " c1", "data": {"copy": 1}},
        {"log_id": "c1\u2003", "data": {"copy": 2}},
        {"log_id": 7, "data": {"copy": 3}},
        {"data": {"log_id": "c1", "copy": 4}},
        {"log_id": "\u00a0c1\t", "data": {"copy": 5}},
        {"log_id": "7", "data": {"copy": 6}},
    ]
    for body in (jsonl(items), orjson.dumps(items)):
        answer = await post(client, body)
        assert (answer["received"], answer["rejected"]) == (6, 0)
        assert answer["stored"] + answer["duplicates"] == 6
    assert await stored_ids(engine) == {"c1", "7"}
    assert (await get_event(engine, "c1")).data == {"copy": 1}
    assert (await get_event(engine, "7")).data == {"copy": 3}
