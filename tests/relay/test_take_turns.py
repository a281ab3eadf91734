"""Transactions that read and then write on what they read take turns (app.db.take_turns), on SQLite
as on PostgreSQL. Each test holds the turn in a transaction of its own while two contenders reach
it, then lets go: both have read by then unless the turn keeps them out, so a broken turn shows every
time, not by chance."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import ENV_DESTINATIONS_LOCK, REPLAY_LOCK, RETENTION_LOCK, make_engine, take_turns
from app.destinations import DestinationSpec, sync_env_destinations
from app.models import Destination, OutboxItem
from app.retention import purge_events_chunk
from tests.conftest import LiveServer
from tests.factories import make_event
from tests.relay.conftest import add_destination, ingest


@contextlib.asynccontextmanager
async def turn_held(engine: AsyncEngine, key: int, sub: int = 0) -> AsyncIterator[None]:
    """Another process's transaction that holds the turn and writes: on SQLite a writer holds the
    database's write lock whatever take_turns does."""
    async with engine.begin() as conn:
        await take_turns(conn, key, sub)
        await conn.execute(update(Destination).values(updated_at=Destination.updated_at))
        yield


@contextlib.contextmanager
def waiting(engines: list[AsyncEngine], count: int) -> Iterator[asyncio.Event]:
    """Set once `count` statements that wait for a held turn were sent on `engines`: a take_turns,
    or a write (SQLite makes a write wait for the write lock)."""
    reached = asyncio.Event()
    seen: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        words = statement.lstrip().split(None, 1)
        if "pg_advisory_xact_lock" in statement or words[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            seen.append(statement)
            if len(seen) >= count:
                reached.set()

    for engine in engines:
        event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        yield reached
    finally:
        for engine in engines:
            event.remove(engine.sync_engine, "before_cursor_execute", on_execute)


async def test_processes_starting_together_create_the_env_destination_once(
    settings: Settings, engine: AsyncEngine
) -> None:
    """`serve --workers 2`: each process applies FORWARD_URL at start-up."""
    specs = [DestinationSpec(name="forward", url="https://siem.example.com/in")]
    processes = [make_engine(settings) for _ in range(2)]

    async def start(process: AsyncEngine) -> None:
        async with process.begin() as conn:
            await sync_env_destinations(conn, specs, timedelta(days=1))

    try:
        with waiting(processes, 2) as both_waiting:
            async with turn_held(engine, ENV_DESTINATIONS_LOCK):
                starts = asyncio.gather(*(start(process) for process in processes), return_exceptions=True)
                await both_waiting.wait()
            assert await starts == [None, None]
    finally:
        await asyncio.gather(*(process.dispose() for process in processes))
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Destination)) == 1


async def test_replays_at_once_queue_each_event_once(
    relay: LiveServer, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    events = [make_event() for _ in range(50)]
    await ingest(api, events)
    destination = await add_destination(api, "https://hooks.example.com/in")  # failures: "f"
    path = f"/api/destinations/{destination['id']}/replay"

    with waiting([relay.context.engine], 2) as both_waiting:
        async with turn_held(engine, REPLAY_LOCK, destination["id"]):
            replays = asyncio.gather(api.post(path), api.post(path))
            await both_waiting.wait()
        answers = await replays
    assert sorted(answer.json()["queued"] for answer in answers) == [0, len(events)]
    async with engine.connect() as conn:
        queued = select(func.count(OutboxItem.id), func.count(OutboxItem.log_id.distinct()))
        assert tuple((await conn.execute(queued)).one()) == (len(events), len(events))


async def test_reads_do_not_wait_for_a_held_turn(
    relay: LiveServer, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Only transactions that take turns wait: the query API reads beside a writer."""
    await ingest(api, [make_event()])
    async with turn_held(engine, REPLAY_LOCK):
        assert (await api.get("/api/deliveries")).status_code == 200
        assert (await api.get("/api/destinations")).status_code == 200
        events = await api.get("/api/events")
        assert events.status_code == 200
        assert len(events.json()["events"]) == 1


@pytest.mark.parametrize("also_replaying", [False, True], ids=["purging", "purging-and-replaying"])
async def test_a_replay_never_queues_an_event_that_a_purge_deletes_meanwhile(
    relay: LiveServer, api: httpx.AsyncClient, engine: AsyncEngine, also_replaying: bool
) -> None:
    """A purge chunk that runs while a replay waits for its turn: the replay reads its page after it,
    so it queues nothing for the purged events, and no pending row is left without its event. A
    purge holds the retention turn only; holding the replay's own as well makes the replay wait at
    its first turn, which is where the code before read its page."""
    old = datetime.now(UTC) - timedelta(days=400)
    events = [make_event(date=old.isoformat().replace("+00:00", "Z")) for _ in range(5)]
    await ingest(api, events)
    destination = await add_destination(api, "https://hooks.example.com/in")  # failures: "f"
    path = f"/api/destinations/{destination['id']}/replay"

    with waiting([relay.context.engine], 1) as replay_waits:
        async with engine.begin() as conn:  # a purge chunk, as retention runs one
            await take_turns(conn, RETENTION_LOCK)
            if also_replaying:
                await take_turns(conn, REPLAY_LOCK, destination["id"])
            replay = asyncio.create_task(api.post(path))
            await replay_waits.wait()
            purged, _ = await purge_events_chunk(conn, old + timedelta(days=1), None, 100)
            assert purged == len(events)
        answer = await replay
    assert answer.status_code == 200
    assert answer.json()["queued"] == 0
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(OutboxItem)) == 0
