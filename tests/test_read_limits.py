"""QUERY_TIMEOUT beyond the query API, through real HTTP and a real database whose reads stall
(tests/database_stall.py): the admin reads answer 504 rather than hang, /metrics answers its counters
with logrelay_database_up 0, and the limit holds for a whole read, not for each of its statements."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.config import Settings
from tests.conftest import ADMIN_TOKEN, READ_TOKEN, LiveServer, auth, bearer, read_metrics, sample, scrape
from tests.database_stall import stalled
from tests.factories import make_event, make_stream_body
from tests.test_openapi import ERROR_BODY

LIMIT = 0.5
# Far past LIMIT: a read that is not limited waits this long, then answers 200.
STALL = 4 * LIMIT
ADMIN = bearer(ADMIN_TOKEN)
FORWARD_URL = "http://127.0.0.1:9/in"  # never called: the workers do not run
# (path, the document's path, the table whose read is stalled)
ADMIN_READS = [
    ("/api/destinations", "/api/destinations", "destinations"),
    ("/api/destinations/1", "/api/destinations/{destination_id}", "destinations"),
    ("/api/deliveries", "/api/deliveries", "outbox_items"),
    ("/api/poller", "/api/poller", "poller_state"),
]


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """conftest's live server and client take these: one destination (id 1), from the settings, and a
    small QUERY_TIMEOUT."""
    return make_settings(query_timeout=LIMIT, forward_url=FORWARD_URL)


@pytest.mark.parametrize(("path", "documented", "table"), ADMIN_READS, ids=[p for p, _, _ in ADMIN_READS])
async def test_an_admin_read_past_the_limit_is_answered_504(
    live: LiveServer,
    engine: AsyncEngine,
    client: httpx.AsyncClient,
    path: str,
    documented: str,
    table: str,
) -> None:
    before = await read_metrics(client)
    async with stalled(live.context.engine, engine, STALL, table) as held:
        response = await client.get(path, headers=ADMIN)
    assert held == [table]
    assert response.status_code == 504, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "query_timeout"
    assert "longer than QUERY_TIMEOUT (0.5 s)" in body["detail"]
    # The connection it ran on, and every other, serves the next read.
    for _ in range(live.context.engine.pool.checkedin() + 1):
        assert (await client.get(path, headers=ADMIN)).status_code == 200
    after = await read_metrics(client)
    for reader, more in (("admin", 1), ("query", 0), ("metrics", 0)):
        name = "logrelay_query_timeouts_total"
        assert sample(after, name, reader=reader) - sample(before, name, reader=reader) == more

    spec = (await client.get("/openapi.json")).json()
    answer = spec["paths"][documented]["get"]["responses"]["504"]
    assert answer["content"]["application/json"]["schema"] == ERROR_BODY


async def test_a_scrape_past_the_limit_answers_the_counters_and_database_down(
    live: LiveServer, engine: AsyncEngine, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = await read_metrics(client)
    stored = await client.post("/api/logs", content=make_stream_body([make_event()]), headers=auth())
    assert stored.status_code == 200, stored.text
    caplog.set_level(logging.WARNING)
    async with stalled(live.context.engine, engine, STALL, "destinations") as held:
        response = await client.get("/metrics", headers=bearer(READ_TOKEN))
    assert held == ["destinations"]
    assert response.status_code == 200, response.text
    samples = scrape(response.text)
    assert sample(samples, "logrelay_database_up") == 0
    for name, labels in (
        ("logrelay_ingest_requests_total", {"status": "200"}),  # this process's counters are there
        ("logrelay_query_timeouts_total", {"reader": "metrics"}),
    ):
        assert sample(samples, name, **labels) - sample(before, name, **labels) == 1
    assert not any(name.startswith("logrelay_destination_") for name, _ in samples)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "a scrape could not read the database (QueryTimeout): only counters answered" in warnings
    assert not any(token in "\n".join(warnings) for token in (READ_TOKEN, ADMIN_TOKEN))

    again = await read_metrics(client)
    assert sample(again, "logrelay_database_up") == 1
    assert sample(again, "logrelay_destination_info", destination="1", name="forward") == 1


async def test_a_scrape_reads_the_database_for_five_seconds_at_most(
    make_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QUERY_TIMEOUT (30 s by default) beyond the scrape's own cap: the cap holds (made small here,
    so that the test does not wait five seconds)."""
    monkeypatch.setattr(metrics, "SCRAPE_TIME_LIMIT", LIMIT)
    live = await start_server(make_settings())
    async with httpx.AsyncClient(base_url=live.base_url, timeout=60) as client:
        async with stalled(live.context.engine, engine, STALL, "destinations"):
            samples = await read_metrics(client)
        assert sample(samples, "logrelay_database_up") == 0


async def test_the_limit_holds_for_the_whole_read_not_each_statement(
    make_settings: Callable[..., Settings], start_server: Callable[..., Any], engine: AsyncEngine
) -> None:
    """GET /api/destinations/{id} reads the destination, then its outbox rows. Either stalled for 60%
    of the limit alone is answered; both, each within the limit but together past it, are a 504."""
    limit, part = 1.0, 0.6
    live = await start_server(make_settings(query_timeout=limit, forward_url=FORWARD_URL))
    async with httpx.AsyncClient(base_url=live.base_url, timeout=60) as client:
        for table in ("destinations", "outbox_items"):
            async with stalled(live.context.engine, engine, part, table) as held:
                response = await client.get("/api/destinations/1", headers=ADMIN)
            assert held == [table]
            assert response.status_code == 200, response.text

        async with stalled(live.context.engine, engine, part, "destinations", "outbox_items") as held:
            response = await client.get("/api/destinations/1", headers=ADMIN)
        assert held == ["destinations", "outbox_items"]
        assert response.status_code == 504, response.text
        assert response.json()["error"] == "query_timeout"


async def test_the_wait_for_a_pooled_connection_counts_toward_the_limit(
    live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every pooled connection taken (by slow reads, say): a read answers 503 once QUERY_TIMEOUT has
    passed, rather than after the pool's own 30 s, and a scrape answers its counters. None of them
    keeps a connection, and one given back serves the next read."""
    caplog.set_level(logging.WARNING)
    engine = live.context.engine
    pool = engine.pool
    held = [await engine.connect() for _ in range(pool.size() + pool._max_overflow)]
    # A client that gives up long before the pool's own wait (30 s) would end.
    async with httpx.AsyncClient(base_url=live.base_url, timeout=10) as client:
        try:
            for path, headers in (("/api/events", bearer(READ_TOKEN)), ("/api/destinations", ADMIN)):
                response = await client.get(path, headers=headers)
                assert response.status_code == 503, response.text
                assert response.json() == {
                    "error": "unavailable",
                    "detail": "no database connection came free within QUERY_TIMEOUT (0.5 s): each is busy "
                    "with another read; retry",
                }
            assert sample(await read_metrics(client), "logrelay_database_up") == 0
            assert pool.checkedout() == len(held)
            logged = [record.getMessage() for record in caplog.records]
            assert [line for line in logged if "got no database connection" in line] == [
                f"{reader} read got no database connection within QUERY_TIMEOUT (0.5 s)"
                for reader in ("a query API", "an admin API", "a /metrics")
            ]

            await held.pop().close()
            assert (await client.get("/api/events", headers=bearer(READ_TOKEN))).status_code == 200
        finally:
            for conn in held:
                await conn.close()
    assert pool.checkedout() == 0
