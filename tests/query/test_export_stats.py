"""One event by id, the JSON Lines export and the stats, through real HTTP."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth0.catalog import category_of
from app.query import EventQuery, export_lines
from tests.query.support import BASE, READ, expected_ids, iso, seed, varied_events


async def test_get_event_by_id(client: httpx.AsyncClient) -> None:
    events = varied_events(5)
    await seed(client, events)
    wanted = events[3]
    response = await client.get(f"/api/events/{wanted['log_id']}", headers=READ)
    assert response.status_code == 200
    body = response.json()
    assert body["log_id"] == wanted["log_id"]
    assert body["data"] == wanted
    assert body["category"] == category_of(wanted["type"])


async def test_unknown_event_is_a_404_json_error(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/events/no-such-id", headers=READ)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert "no-such-id" in response.json()["detail"]


async def test_export_streams_every_matching_event_as_json_lines(client: httpx.AsyncClient) -> None:
    # More than one export page (1000 events), so that the stream crosses keyset pages.
    events = varied_events(2150, start=BASE - timedelta(days=60))
    for start in range(0, len(events), 500):
        await seed(client, events[start : start + 500])
    async with client.stream("GET", "/api/events/export", headers=READ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [line async for line in response.aiter_lines() if line]
    exported = [orjson.loads(line) for line in lines]
    assert [e["log_id"] for e in exported] == expected_ids(events)
    assert exported[0]["data"] == next(e for e in events if e["log_id"] == exported[0]["log_id"])


async def test_export_applies_the_filters(client: httpx.AsyncClient) -> None:
    events = varied_events()
    await seed(client, events)
    filters = {"category": "failure", "since": "2026-11-20T12:00:00Z"}
    response = await client.get("/api/events/export", params=filters, headers=READ)
    assert response.status_code == 200
    exported = [orjson.loads(line)["log_id"] for line in response.text.splitlines()]
    assert exported == expected_ids(events, **filters)
    assert exported


@pytest.mark.parametrize("types", [["fp,s"], ["fp", "s", "w"]])
async def test_export_of_several_types_merges_them(client: httpx.AsyncClient, types: list[str]) -> None:
    # Several codes and no narrower filter take the merged (one scan per code) statement.
    events = varied_events()
    await seed(client, events)
    response = await client.get("/api/events/export", params={"type": types}, headers=READ)
    assert response.status_code == 200
    exported = [orjson.loads(line) for line in response.text.splitlines()]
    assert [e["log_id"] for e in exported] == expected_ids(events, type=types)
    assert len({e["type"] for e in exported}) == len(",".join(types).split(","))


async def test_export_of_nothing_is_empty(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/events/export", params={"type": "nothing"}, headers=READ)
    assert response.status_code == 200
    assert response.text == ""


def _bucket(date: str, interval: str) -> str:
    parsed = datetime.fromisoformat(date).astimezone(UTC)
    start = parsed.replace(minute=0, second=0, microsecond=0)
    if interval == "day":
        start = start.replace(hour=0)
    return iso(start)


@pytest.mark.parametrize("interval", ["hour", "day"])
async def test_stats_count_per_type_and_category_per_bucket(client: httpx.AsyncClient, interval: str) -> None:
    events = varied_events(90)  # 37 minutes apart: about 55 hours, over three UTC days
    await seed(client, events)
    since, until = "2026-11-20T09:30:00Z", "2026-11-22T03:00:00Z"
    response = await client.get(
        "/api/stats", params={"interval": interval, "since": since, "until": until}, headers=READ
    )
    assert response.status_code == 200, response.text
    body = response.json()
    inside = [e for e in events if e["log_id"] in set(expected_ids(events, since=since, until=until))]
    assert body["interval"] == interval
    assert body["since"] == "2026-11-20T09:30:00.000Z"
    assert body["until"] == "2026-11-22T03:00:00.000Z"
    assert body["total"] == len(inside)
    assert body["by_type"] == dict(Counter(e["type"] for e in inside))
    assert body["by_category"] == dict(Counter(category_of(e["type"]) for e in inside))
    expected: dict[str, Counter[str]] = {}
    for event in inside:
        expected.setdefault(_bucket(event["date"], interval), Counter())[event["type"]] += 1
    assert [b["start"] for b in body["buckets"]] == sorted(expected)
    for bucket in body["buckets"]:
        assert bucket["by_type"] == dict(expected[bucket["start"]])
        assert bucket["total"] == sum(expected[bucket["start"]].values())
        assert sum(bucket["by_category"].values()) == bucket["total"]
    assert len(body["buckets"]) == (3 if interval == "day" else len(expected))


async def test_stats_take_the_filters(client: httpx.AsyncClient) -> None:
    events = varied_events()
    await seed(client, events)
    params = {"interval": "day", "since": "2026-11-19T00:00:00Z", "until": "2026-11-23T00:00:00Z"}
    body = (await client.get("/api/stats", params={**params, "user_id": "auth0|alice"}, headers=READ)).json()
    assert body["total"] == len(expected_ids(events, user_id="auth0|alice"))
    assert body["total"] > 0


async def test_stats_default_to_the_last_day(client: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    events = varied_events(3, start=now - timedelta(hours=30))  # all but recent ones fall outside
    events += varied_events(2, start=now - timedelta(hours=2))
    await seed(client, events)
    body = (await client.get("/api/stats", headers=READ)).json()
    assert body["interval"] == "hour"
    assert body["total"] == 2
    span = datetime.fromisoformat(body["until"]) - datetime.fromisoformat(body["since"])
    assert span == timedelta(hours=24)


async def test_export_reads_keyset_pages_while_events_arrive(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The stream is read page by page (so memory stays flat); events stored meanwhile neither
    repeat nor hide those that existed when it began."""
    original = varied_events(23)
    await seed(client, original)
    chunks: list[bytes] = []
    arrivals: list[dict[str, Any]] = []
    async for chunk in export_lines(engine, EventQuery(), None, page=5):
        chunks.append(chunk)
        newer = varied_events(1, start=BASE + timedelta(days=5, minutes=len(chunks)))
        older = varied_events(1, start=BASE - timedelta(days=5, minutes=len(chunks)))
        await seed(client, newer + older)
        arrivals += newer + older
    assert all(chunk.count(b"\n") <= 5 for chunk in chunks)
    assert len(chunks) >= 5
    exported = [orjson.loads(line)["log_id"] for chunk in chunks for line in chunk.splitlines()]
    assert len(exported) == len(set(exported))
    assert [i for i in exported if i in {e["log_id"] for e in original}] == expected_ids(original)
    # Keyset semantics: what arrives behind the reader is not read, what arrives ahead of it is.
    assert not {e["log_id"] for e in arrivals if e["date"] > original[-1]["date"]} & set(exported)
    # (The last pair arrived after the final page was read.)
    assert {e["log_id"] for e in arrivals[:-2] if e["date"] < original[0]["date"]} <= set(exported)
