"""Concurrency, the delivery loop inside `serve`, ingest beside a stuck destination, and two workers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import claims, outbox
from app.config import Settings
from app.db import make_engine
from app.delivery import deliver_destination_once, run_delivery_loop
from app.models import LogEvent, OutboxItem
from app.retry import Outcome, RetryPolicy
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.factories import make_event
from tests.relay.conftest import add_destination, deliver_all, ingest, statuses
from tests.relay.receiver import Receiver

# Requests wait for each other at the receiver: well within the delivery timeout however slowly
# the three of a group arrive (they come in whole groups of three: 9 and 24 requests).
PATIENT = {"delivery_timeout": 30.0, "delivery_lease": timedelta(minutes=5)}


@pytest.mark.parametrize("relay", [PATIENT], indirect=True)
@pytest.mark.parametrize(("batch", "per_call", "events"), [(True, 2, 18), (False, 1, 24)])
async def test_concurrent_calls_are_used_and_never_exceeded(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, batch: bool, per_call: int, events: int
) -> None:
    receiver.gather = 3  # each request waits until three are open (a sender that never opens three:
    receiver.gather_within = 20.0  # 20 s per request, then max_in_flight says so)
    destination = await add_destination(
        api, receiver.url, send_as_batch=batch, batch_size=per_call, concurrent_calls=3
    )
    await ingest(api, [make_event() for _ in range(events)])
    await deliver_all(relay.context)
    assert receiver.max_in_flight == 3
    assert len(receiver.events()) == events
    assert await statuses(api, destination["id"]) == {
        "pending": 0,
        "failed": 0,
        "delivered": events,
        "dead": 0,
    }


async def test_serve_runs_the_delivery_loop(
    relay_settings: Callable[..., Settings], start_server: Callable[..., Any], receiver: Receiver
) -> None:
    live = await start_server(relay_settings(run_workers=True))
    async with httpx.AsyncClient(base_url=live.base_url, headers={"Authorization": ADMIN_TOKEN}) as api:
        await add_destination(api, receiver.url, batch_size=10)
        events = [make_event() for _ in range(25)]
        await ingest(api, events)
        await receiver.wait_for(3)
        await ingest(api, [make_event(type="s")])  # not a failure: never sent
        extra = make_event()
        await ingest(api, [extra])
        await receiver.wait_for(4)
    assert sorted(e["log_id"] for e in receiver.events()) == sorted(e["log_id"] for e in [*events, extra])


async def test_a_stuck_destination_never_slows_ingest(
    relay_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    live = await start_server(relay_settings(run_workers=True, delivery_timeout=60.0, delivery_lease=300))
    receiver.hold = asyncio.Event()  # the receiver accepts the request and never answers
    async with httpx.AsyncClient(base_url=live.base_url, headers={"Authorization": ADMIN_TOKEN}) as api:
        await add_destination(api, receiver.url)
        await ingest(api, [make_event()])
        await receiver.wait_for(1)
        later = [make_event() for _ in range(50)]
        answer = await ingest(api, later)  # answered while the delivery is still hanging
        assert answer["stored"] == 50
        assert receiver.in_flight == 1
        assert len(receiver.requests) == 1
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(LogEvent)) == 51
            assert await conn.scalar(select(func.count()).select_from(OutboxItem)) == 51
        receiver.hold.set()
        await receiver.wait_for(2)


async def test_two_workers_never_claim_the_same_row_nor_more_calls_than_allowed(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, settings: Settings
) -> None:
    """Two claimers on their own engines race for one destination's rows and calls (PostgreSQL: SKIP
    LOCKED on the destination and its rows; SQLite: a claim takes the write lock before it counts);
    each settles its claim, as a worker does once its requests have answered."""
    destination = await add_destination(api, receiver.url, batch_size=7, concurrent_calls=3)
    await ingest(api, [make_event() for _ in range(300)])
    engines = [make_engine(settings), make_engine(settings)]
    claimed: list[list[int]] = [[], []]
    held = [0, 0]  # the calls of the claims held right now, by claimer
    most = 0

    async def claimer(index: int) -> None:
        nonlocal most
        while len(claimed[0]) + len(claimed[1]) < 300:
            async with engines[index].begin() as conn:
                claim = await claims.claim_due(conn, destination["id"], timedelta(minutes=5), RetryPolicy())
            if claim is None:
                await asyncio.sleep(0)
                continue
            claimed[index].extend(item.id for item in claim.items)
            held[index] = claim.calls
            most = max(most, sum(held))
            await asyncio.sleep(0)  # the other claimer tries while this claim is held
            held[index] = 0  # before the settle commits: until then the database counts the calls too
            async with engines[index].begin() as conn:
                await outbox.record_outcomes(conn, claim, [(claim.items, Outcome(200))], RetryPolicy())

    try:
        async with asyncio.timeout(120):  # a bound on waiting, not a timing assertion
            await asyncio.gather(claimer(0), claimer(1))
    finally:
        for engine in engines:
            await engine.dispose()
    both = claimed[0] + claimed[1]
    assert not set(claimed[0]) & set(claimed[1])
    assert len(both) == len(set(both)) == 300
    assert claimed[0]
    assert claimed[1]
    assert most == 3


async def test_two_delivery_workers_send_each_row_once(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, settings: Settings
) -> None:
    destination = await add_destination(api, receiver.url, batch_size=5, concurrent_calls=2)
    events = [make_event() for _ in range(200)]
    await ingest(api, events)
    context = relay.context

    async def worker() -> None:
        idle = 0
        while idle < 5:
            idle = 0 if await deliver_destination_once(context, destination["id"]) else idle + 1

    await asyncio.gather(worker(), worker())
    received = Counter(e["log_id"] for e in receiver.events())
    assert set(received) == {e["log_id"] for e in events}
    assert max(received.values()) == 1


async def test_the_loop_stops_promptly(relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver) -> None:
    await add_destination(api, receiver.url)
    stop = asyncio.Event()
    loop = asyncio.create_task(run_delivery_loop(relay.context, stop))
    await ingest(api, [make_event()])
    await receiver.wait_for(1)
    stop.set()
    await asyncio.wait_for(loop, 5)


async def test_a_stop_lets_the_round_in_flight_finish(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    await add_destination(api, receiver.url)
    receiver.hold = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.create_task(run_delivery_loop(relay.context, stop))
    await ingest(api, [make_event()])
    await receiver.wait_for(1)
    stop.set()  # a graceful stop while the request is under way
    await asyncio.sleep(0)
    receiver.hold.set()
    await asyncio.wait_for(loop, 10)
    async with engine.connect() as conn:
        row = (await conn.execute(select(OutboxItem.status, OutboxItem.lease_until))).one()
    assert tuple(row) == ("delivered", None)  # recorded: it will not be sent again
    assert len(receiver.requests) == 1


async def test_a_cancelled_round_gives_its_rows_back_at_once(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    destination = await add_destination(api, receiver.url, batch_size=2, concurrent_calls=1)
    await ingest(api, [make_event() for _ in range(4)])
    receiver.hold = asyncio.Event()
    round_ = asyncio.create_task(deliver_destination_once(relay.context, destination["id"]))
    await receiver.wait_for(1)
    round_.cancel()  # a stop that could not wait (the lease is 30 s)
    with pytest.raises(asyncio.CancelledError):
        await round_
    async with engine.connect() as conn:
        rows = list(
            await conn.execute(select(OutboxItem.status, OutboxItem.attempts, OutboxItem.lease_until))
        )
    assert {tuple(row) for row in rows} == {("pending", 0, None)}
    receiver.hold.set()
    await deliver_all(relay.context)  # sent again now, not after the lease
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 4, "dead": 0}
