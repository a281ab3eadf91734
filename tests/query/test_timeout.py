"""QUERY_TIMEOUT through real HTTP, on a real database: a read that runs past it is stopped by the
database and answered 504; the pool stays usable, and ingest is not limited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import LogEvent
from tests.conftest import LiveServer, auth, is_postgres
from tests.factories import make_event, make_stream_body
from tests.query.support import READ
from tests.receiver.test_commit import write_lock
from tests.test_openapi import ERROR_BODY

# 100 times what a page of this small store takes, and a small share of what the slow search takes.
LIMIT = 0.5
# `q` is a substring search (`%q%`). Against text made of "a", this pattern is tried at every position
# and fails only at its last character, so each row costs about len(text) * len(q) steps, on both
# databases: 1.3 to 2.2 s per 10,000 rows here, so 30,000 rows take 6 to 12 times LIMIT. Slow without
# a lock, a sleep, or any code of the app's that is there for tests.
SLOW_Q = "a" * 199 + "b"
SLOW_ROWS = 30_000
NOW = datetime.now(UTC).replace(microsecond=0)
ROUTES = [
    ("/api/events", {}),
    ("/api/events/export", {}),
    ("/api/stats", {"since": (NOW - timedelta(days=2)).isoformat()}),
]


def _row(log_id: str, date: datetime, description: str, user_name: str) -> dict[str, Any]:
    return {
        "log_id": log_id,
        "date": date,
        "type": "f",
        "category": "failure",
        "user_name": user_name,
        "description": description,
        "data": {"log_id": log_id, "type": "f"},
        "source": "stream",
        "received_at": date,
        "id_generated": False,
    }


async def store_rows(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    """Bulk SQL, to fill the store quickly: what is under test is reading, not ingest."""
    async with engine.begin() as conn:
        await conn.execute(insert(LogEvent), rows)


async def store_slow_rows(engine: AsyncEngine, newest: datetime) -> None:
    """SLOW_ROWS events, 0.1 s apart back from `newest`, that SLOW_Q searches slowly and never finds."""
    description, user_name = "a" * 512, "a" * 300  # the longest description stored is 512 characters
    rows = [
        _row(f"slow-{i:06d}", newest - timedelta(seconds=i / 10), description, user_name)
        for i in range(SLOW_ROWS)
    ]
    await store_rows(engine, rows)


@pytest.fixture
async def limited(
    make_settings: Callable[..., Settings], start_server: Callable[..., Any], engine: AsyncEngine
) -> LiveServer:
    await store_slow_rows(engine, NOW - timedelta(hours=1))
    server: LiveServer = await start_server(make_settings(query_timeout=LIMIT))
    return server


async def assert_pool_is_healthy(client: httpx.AsyncClient, live: LiveServer) -> None:
    """Every pooled connection answers a read at once, that which ran the stopped query included: the
    pool hands them out in turn (first in, first out) and that one went back last. A connection whose
    database were still at the stopped query would keep this read waiting past the limit (a 504)."""
    for _ in range(live.context.engine.pool.checkedin() + 1):
        response = await client.get("/api/events", params={"limit": 3}, headers=READ)
        assert response.status_code == 200, response.text
        events = response.json()["events"]
        assert len(events) == 3
        one = await client.get(f"/api/events/{events[0]['log_id']}", headers=READ)
        assert one.status_code == 200, one.text


async def active_statements_on_log_events(engine: AsyncEngine) -> int:
    """PostgreSQL: statements naming log_events that other client connections are running now."""
    async with engine.connect() as conn:
        count: int = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND state = 'active' "
                "AND query LIKE '%log_events%'"
            )
        )
    return count


@pytest.mark.parametrize(("path", "params"), ROUTES, ids=[path for path, _ in ROUTES])
async def test_a_read_past_the_limit_is_stopped_and_answered_504(
    limited: LiveServer, engine: AsyncEngine, path: str, params: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=limited.base_url, timeout=60) as client:
        response = await client.get(path, params={"q": SLOW_Q, **params}, headers=READ)
        assert response.status_code == 504, response.text[:300]
        body = response.json()
        assert set(body) == {"error", "detail"}
        assert body["error"] == "query_timeout"
        assert "longer than QUERY_TIMEOUT (0.5 s)" in body["detail"]
        assert "since/until" in body["detail"]  # says how to narrow it
        if is_postgres():
            # The server stopped the statement: not one that the client gave up on and left running.
            assert await active_statements_on_log_events(engine) == 0
        await assert_pool_is_healthy(client, limited)

        spec = (await client.get("/openapi.json")).json()
        documented = spec["paths"][path]["get"]["responses"]["504"]
        assert documented["content"]["application/json"]["schema"] == ERROR_BODY


async def test_the_limit_is_per_export_page_and_a_late_page_cuts_the_stream(
    make_settings: Callable[..., Settings], start_server: Callable[..., Any], engine: AsyncEngine
) -> None:
    """Five pages of matches stream, each its own read within the limit; the sixth must read every
    slow row after the last match, runs past the limit and ends the stream without its last chunk,
    so that the client sees an error rather than an export that looks complete."""
    # One match more than five pages: both databases read on past a page's last row until a row that
    # matches shows that its date has ended (incremental sort), so that match ends the fifth page.
    matches = [
        _row(f"match-{i:04d}", NOW - timedelta(seconds=i), SLOW_Q, "dev@example.com") for i in range(5001)
    ]
    await store_rows(engine, matches)
    await store_slow_rows(engine, NOW - timedelta(hours=2))
    if is_postgres():
        # The statistics autovacuum would gather on a live database, so that the planner reads
        # newest first by the date index and stops at the page's end, instead of reading every row.
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE log_events"))
    live = await start_server(make_settings(query_timeout=LIMIT))
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=live.base_url, timeout=60) as client:
        with pytest.raises(httpx.RemoteProtocolError):  # the body ended without its last chunk
            await read_export(client, {"q": SLOW_Q}, lines)
        assert [orjson.loads(line)["log_id"] for line in lines] == [row["log_id"] for row in matches[:5000]]
        await assert_pool_is_healthy(client, live)


async def read_export(client: httpx.AsyncClient, params: dict[str, str], lines: list[str]) -> None:
    """GET /api/events/export, its lines appended to `lines` as they come."""
    async with client.stream("GET", "/api/events/export", params=params, headers=READ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            lines.append(line)


async def test_ingest_is_not_limited(limited: LiveServer, engine: AsyncEngine, settings: Settings) -> None:
    """Reads on the pool's connections ran past the limit and were stopped; then a POST that waits
    for the write lock three times as long as the limit is stored all the same."""
    async with httpx.AsyncClient(base_url=limited.base_url, timeout=60) as client:
        for _ in range(2):  # two in parallel: more than one pooled connection had the limit set
            slow = [client.get("/api/events", params={"q": SLOW_Q}, headers=READ) for _ in range(2)]
            assert [r.status_code for r in await asyncio.gather(*slow)] == [504, 504]
        event = make_event()
        async with write_lock(engine, settings):
            post = asyncio.create_task(
                client.post("/api/logs", content=make_stream_body([event]), headers=auth())
            )
            await asyncio.sleep(3 * LIMIT)
            assert not post.done()  # waiting for the lock, past the limit
        response = await post
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == 1
        found = await client.get(f"/api/events/{event['log_id']}", headers=READ)
        assert found.status_code == 200
