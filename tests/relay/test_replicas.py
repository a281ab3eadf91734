"""Replicas on one PostgreSQL database doing the same read-then-write at once take turns."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import make_engine
from app.destinations import DestinationSpec, sync_env_destinations
from app.models import Destination, OutboxItem
from tests.conftest import PG_URL, LiveServer
from tests.factories import make_event
from tests.relay.conftest import add_destination, ingest

pytestmark = pytest.mark.skipif(not PG_URL, reason="replicas share PostgreSQL")

REPLICAS = 4


async def test_replicas_starting_together_create_the_env_destination_once(
    settings: Settings, engine: AsyncEngine
) -> None:
    specs = [DestinationSpec(name="forward", url="https://siem.example.com/in")]
    engines = [make_engine(settings) for _ in range(REPLICAS)]  # a connection of each replica's own

    async def start(replica: AsyncEngine) -> None:
        async with replica.begin() as conn:
            await sync_env_destinations(conn, specs, timedelta(days=1))

    try:
        await asyncio.gather(*(start(replica) for replica in engines))
    finally:
        await asyncio.gather(*(replica.dispose() for replica in engines))
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Destination)) == 1


async def test_replays_at_once_queue_each_event_once(
    relay: LiveServer, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    destination = await add_destination(api, "https://hooks.example.com/in", types=["s"], categories=[])
    events = [make_event(type="s") for _ in range(3000)]  # two replay pages
    await api.patch(f"/api/destinations/{destination['id']}", json={"enabled": False})  # nothing queued
    for start in range(0, len(events), 1000):
        await ingest(api, events[start : start + 1000])
    await api.patch(f"/api/destinations/{destination['id']}", json={"enabled": True})

    path = f"/api/destinations/{destination['id']}/replay"
    answers = await asyncio.gather(*(api.post(path) for _ in range(REPLICAS)))
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    assert sum(answer.json()["queued"] for answer in answers) == len(events)
    async with engine.connect() as conn:
        queued = select(func.count(OutboxItem.id), func.count(OutboxItem.log_id.distinct()))
        assert tuple((await conn.execute(queued)).one()) == (len(events), len(events))
