"""Relay fixtures: a real webhook receiver, the app with short delivery timings, and helpers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.context import Context
from app.db import db_now
from app.models import Destination, OutboxItem
from app.observability import quiet_secret_loggers
from tests.conftest import ADMIN_TOKEN, LiveServer, auth
from tests.factories import make_stream_body

# Fast enough for tests: the backoff stays under FAST_BACKOFF_MAX seconds.
FAST_BACKOFF_MAX = 0.05
FAST = {
    "delivery_backoff_base": 0.01,
    "delivery_backoff_max": FAST_BACKOFF_MAX,
    "delivery_lease": timedelta(seconds=30),
    "delivery_poll_interval": 0.02,
    "delivery_timeout": 5.0,
}
# A destination that fails stays backed off for the whole test: `@pytest.mark.parametrize("relay",
# [SLOW_BACKOFF], indirect=True)`.
SLOW_BACKOFF = {"delivery_backoff_base": 600.0, "delivery_backoff_max": 600.0}


@pytest.fixture
def service_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record at the levels the service logs at, with our own loggers at DEBUG."""
    floors = {name: logging.getLogger(name).level for name in ("aiosqlite", "httpx", "httpcore", "asyncpg")}
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="app")
    quiet_secret_loggers()
    yield caplog
    for name, level in floors.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def relay_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return make_settings(**(FAST | overrides))

    return make


@pytest.fixture
async def relay(
    request: pytest.FixtureRequest, relay_settings: Callable[..., Settings], start_server: Callable[..., Any]
) -> LiveServer:
    """The app with fast delivery settings, or with those an indirect parameter gives (SLOW_BACKOFF);
    its workers are off, so tests drive delivery."""
    server: LiveServer = await start_server(relay_settings(**getattr(request, "param", {})))
    return server


@pytest.fixture
async def api(relay: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client on the relay app carrying the admin token."""
    async with httpx.AsyncClient(
        base_url=relay.base_url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as client:
        yield client


async def add_destination(api: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    body = {"name": fields.pop("name", "hook"), "url": url} | fields
    response = await api.post("/api/destinations", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def ingest(api: httpx.AsyncClient, events: list[dict[str, Any]]) -> dict[str, Any]:
    response = await api.post("/api/logs", content=make_stream_body(events, "jsonl"), headers=auth())
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def deliver_all(context: Any, max_rounds: int = 100) -> int:
    """Run delivery rounds until one settles nothing; returns the rows settled."""
    from app.delivery import deliver_once

    total = 0
    for _ in range(max_rounds):
        settled = await deliver_once(context)
        if not settled:
            return total
        total += settled
    raise AssertionError("delivery did not settle")


async def statuses(api: httpx.AsyncClient, destination_id: int) -> dict[str, int]:
    """The destination's outbox rows by status, from GET /api/deliveries: its health counts leave
    the delivered history out."""
    counts = dict.fromkeys(("pending", "failed", "delivered", "dead"), 0)
    params: dict[str, Any] = {"destination": destination_id, "limit": 1000}
    while True:
        response = await api.get("/api/deliveries", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        for item in page["items"]:
            counts[item["status"]] += 1
        if page["next"] is None:
            return counts
        params["before"] = page["next"]


async def expire_leases(engine: AsyncEngine) -> None:
    """Every lease ends a second ago, as it would once its time had passed."""
    async with engine.begin() as conn:
        past = await db_now(conn) - timedelta(seconds=1)
        await conn.execute(
            update(OutboxItem).where(OutboxItem.lease_until.is_not(None)).values(lease_until=past)
        )


async def next_round(context: Context) -> int:
    """Once the (short) backoff has run out by the database's clock, one delivery round."""
    from app.delivery import deliver_once

    for _ in range(1000):  # a bound on waiting, not a timing assertion
        async with context.engine.connect() as conn:
            now = await db_now(conn)
            open_rows = OutboxItem.status.in_(["pending", "failed"])
            due = await conn.scalar(select(func.max(OutboxItem.next_attempt_at)).where(open_rows))
            backoff = await conn.scalar(select(func.max(Destination.backoff_until)))
        if all(moment is None or moment <= now for moment in (due, backoff)):
            return await deliver_once(context)
        await asyncio.sleep(0.01)
    raise AssertionError(f"the backoff never ran out (rows due {due}, destination {backoff}, now {now})")
