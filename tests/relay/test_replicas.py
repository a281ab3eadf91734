"""Replicas on one PostgreSQL database: doing the same read-then-write at once they take turns, and
their delivery leases keep to the database's clock whatever their hosts' clocks say."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, tzinfo
from types import ModuleType

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import deliveries, delivery, outbox
from app.config import Settings
from app.context import Context
from app.db import make_engine
from app.delivery import deliver_destination_once
from app.destinations import DestinationSpec, sync_env_destinations
from app.models import Destination, OutboxItem
from tests.conftest import PG_URL, LiveServer
from tests.factories import make_event
from tests.relay.conftest import FAST_BACKOFF_MAX, add_destination, ingest
from tests.relay.receiver import Receiver

# On SQLite every process runs on the host that has the file: one clock, which is the database's.
pytestmark = pytest.mark.skipif(not PG_URL, reason="replicas share PostgreSQL (SQLite: one host, one clock)")

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


def run_ahead(monkeypatch: pytest.MonkeyPatch, ahead: timedelta) -> None:
    """This process's host clock runs `ahead` (the one mock: a real clock cannot be skewed here)."""
    host_clock = delivery._now
    monkeypatch.setattr(delivery, "_now", lambda: host_clock() + ahead)


@contextlib.asynccontextmanager
async def round_in_flight(
    context: Context, receiver: Receiver, destination_id: int
) -> AsyncIterator[asyncio.Task[int]]:
    """A delivery round whose request the receiver holds open until the block ends."""
    receiver.hold = in_flight = asyncio.Event()
    round_ = asyncio.create_task(deliver_destination_once(context, destination_id))
    try:
        await receiver.wait_for(1)  # claimed, its request under way
        yield round_
    finally:
        in_flight.set()
        await asyncio.wait([round_])


async def database_clock(engine: AsyncEngine) -> datetime:
    async with engine.connect() as conn:
        now: datetime = await conn.scalar(text("SELECT clock_timestamp()"))
    return now


async def test_a_worker_whose_clock_runs_ahead_does_not_take_over_rows_in_flight(
    relay: LiveServer,
    api: httpx.AsyncClient,
    receiver: Receiver,
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    destination = await add_destination(api, receiver.url)
    await ingest(api, [make_event()])
    other = dataclasses.replace(relay.context, engine=make_engine(settings))  # a replica of its own
    try:
        async with round_in_flight(relay.context, receiver, destination["id"]) as first:
            receiver.hold = None  # any later request is answered at once
            with monkeypatch.context() as patch:
                run_ahead(patch, 2 * relay.context.settings.delivery_lease)
                assert await deliver_destination_once(other, destination["id"]) == 0  # leased: not its turn
    finally:
        await other.engine.dispose()
    assert first.result() == 1
    assert len(receiver.requests) == 1
    async with engine.connect() as conn:
        assert await conn.scalar(select(OutboxItem.status)) == "delivered"


async def test_a_worker_whose_clock_runs_ahead_leases_and_backs_off_by_the_database_clock(
    relay: LiveServer,
    api: httpx.AsyncClient,
    receiver: Receiver,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lease = relay.context.settings.delivery_lease
    destination = await add_destination(api, receiver.url)
    await ingest(api, [make_event()])
    run_ahead(monkeypatch, 2 * lease)
    receiver.answer(503)
    before = await database_clock(engine)
    async with round_in_flight(relay.context, receiver, destination["id"]) as round_:
        after = await database_clock(engine)
        async with engine.connect() as conn:
            lease_until = await conn.scalar(select(OutboxItem.lease_until))
    assert round_.result() == 1
    assert before + lease <= lease_until <= after + lease  # the claim's now() + the lease
    settled = await database_clock(engine)
    async with engine.connect() as conn:
        row = (await conn.execute(select(OutboxItem.status, OutboxItem.next_attempt_at))).one()
        backoff_until = await conn.scalar(select(Destination.backoff_until))
    assert row.status == "failed"
    # Due again after the backoff by the database's clock, not after the host's skew.
    assert after <= row.next_attempt_at <= settled + timedelta(seconds=FAST_BACKOFF_MAX)
    assert backoff_until == row.next_attempt_at


def host_clock_ahead(monkeypatch: pytest.MonkeyPatch, module: ModuleType, ahead: timedelta) -> None:
    """`module`'s `datetime.now()` runs `ahead`, as on a host whose clock does (a real one cannot be
    skewed here)."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Skewed:
            moved = datetime.now(tz) + ahead
            return cls.fromtimestamp(moved.timestamp(), moved.tzinfo)

    monkeypatch.setattr(module, "datetime", Skewed)


@pytest.mark.parametrize("source", ["stream", "replay"])
async def test_rows_queued_on_a_host_whose_clock_runs_ahead_are_due_by_the_database_clock(
    source: str,
    relay: LiveServer,
    api: httpx.AsyncClient,
    receiver: Receiver,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    destination = await add_destination(api, receiver.url)
    path = f"/api/destinations/{destination['id']}"
    for module in (outbox, deliveries):
        host_clock_ahead(monkeypatch, module, timedelta(hours=1))
    if source == "replay":
        await api.patch(path, json={"enabled": False})  # stored, not queued
    before = await database_clock(engine)
    await ingest(api, [make_event()])
    if source == "replay":
        await api.patch(path, json={"enabled": True})
        assert (await api.post(f"{path}/replay")).json()["queued"] == 1
    after = await database_clock(engine)
    async with engine.connect() as conn:
        row = (await conn.execute(select(OutboxItem.created_at, OutboxItem.next_attempt_at))).one()
    assert before <= row.created_at == row.next_attempt_at <= after
    # Due now: an hour ahead, the row would have waited an hour for its first delivery.
    assert await deliver_destination_once(relay.context, destination["id"]) == 1
    assert len(receiver.requests) == 1


async def test_a_row_being_sent_is_in_flight_to_an_api_host_whose_clock_runs_ahead(
    relay: LiveServer,
    api: httpx.AsyncClient,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    destination = await add_destination(api, receiver.url)
    await ingest(api, [make_event()])
    async with round_in_flight(relay.context, receiver, destination["id"]):
        host_clock_ahead(monkeypatch, deliveries, 2 * relay.context.settings.delivery_lease)
        listed = (await api.get("/api/deliveries")).json()["items"]
    assert [item["in_flight"] for item in listed] == [True]
