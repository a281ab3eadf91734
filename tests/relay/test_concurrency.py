"""A destination's concurrent_calls holds across workers: delivery workers on engines of their own (as
separate processes or replicas have) never have more requests open at its receiver than it allows."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_

from app import claims
from app.claims import Claim
from app.config import Settings
from app.context import Context
from app.db import make_engine
from app.delivery import deliver_destination_once
from app.retry import RetryPolicy
from tests.conftest import LiveServer
from tests.factories import make_event
from tests.relay.conftest import add_destination, deliver_all, expire_leases, ingest, statuses
from tests.relay.receiver import Receiver

CALLS = 2
WITHIN = 30.0  # seconds: a bound on waiting for what must happen, never a timing assertion


@pytest.fixture
async def workers(relay: LiveServer, settings: Settings) -> AsyncIterator[list[Context]]:
    """Two delivery workers, each with an engine (a pool of connections) of its own."""
    contexts = [dataclasses.replace(relay.context, engine=make_engine(settings)) for _ in range(2)]
    yield contexts
    for context in contexts:
        await context.engine.dispose()


async def until(receiver: Receiver, condition: Callable[[], bool]) -> None:
    """Until `condition` holds, checked as each request arrives."""
    async with asyncio.timeout(WITHIN), receiver.arrived:
        await receiver.arrived.wait_for(condition)


async def held_round(first: Context, second: Context, receiver: Receiver, destination_id: int) -> int:
    """`first` sends with its requests held open at the receiver while `second` tries a round of its
    own; then the receiver answers. Returns what `first` settled; `second` must have sent nothing."""
    receiver.hold = hold = asyncio.Event()
    sent_before = len(receiver.requests)
    held = asyncio.create_task(deliver_destination_once(first, destination_id))
    full = asyncio.create_task(until(receiver, lambda: receiver.in_flight == CALLS))
    beyond = asyncio.create_task(until(receiver, lambda: receiver.in_flight > CALLS))
    other: asyncio.Task[int] | None = None
    try:
        await asyncio.wait([held, full], timeout=WITHIN, return_when=asyncio.FIRST_COMPLETED)
        if not full.done():  # the round ended without using every call: nothing was left to send
            return held.result()
        other = asyncio.create_task(deliver_destination_once(second, destination_id))
        # The second worker either finds no free call and gives up, or sends beyond the limit.
        await asyncio.wait([other, beyond], timeout=WITHIN, return_when=asyncio.FIRST_COMPLETED)
        assert receiver.max_in_flight <= CALLS, f"{receiver.max_in_flight} requests at once"
        assert other.result() == 0
        assert len(receiver.requests) - sent_before == CALLS  # all of them the first worker's
    finally:
        hold.set()
        full.cancel()
        beyond.cancel()
        await asyncio.wait([task for task in (held, full, beyond, other) if task is not None])
    return held.result()


@pytest.mark.parametrize(("batch", "events"), [(True, 12), (False, 24)])
async def test_workers_together_never_exceed_concurrent_calls(
    relay: LiveServer,
    api: httpx.AsyncClient,
    receiver: Receiver,
    workers: list[Context],
    batch: bool,
    events: int,
) -> None:
    destination = await add_destination(
        api, receiver.url, send_as_batch=batch, batch_size=2, concurrent_calls=CALLS
    )
    sent = [make_event() for _ in range(events)]
    await ingest(api, sent)
    settled = 0
    for turn in range(events):  # each turn settles at least one row, until none is left
        first, second = workers[turn % 2], workers[(turn + 1) % 2]
        done = await held_round(first, second, receiver, destination["id"])
        if not done:
            break
        settled += done
    assert settled == events
    assert receiver.max_in_flight == CALLS
    received = Counter(event["log_id"] for event in receiver.events())
    assert set(received) == {event["log_id"] for event in sent}
    assert max(received.values()) == 1
    assert await statuses(api, destination["id"]) == {
        "pending": 0,
        "failed": 0,
        "delivered": events,
        "dead": 0,
    }


async def test_the_calls_of_a_worker_that_died_free_up_when_its_lease_ends(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    destination = await add_destination(api, receiver.url, send_as_batch=False, concurrent_calls=CALLS)
    await ingest(api, [make_event() for _ in range(20)])
    # A worker claims rows and dies before sending or recording anything.
    lease = relay.context.settings.delivery_lease
    async with engine.begin() as conn:
        claim = await claims.claim_due(conn, destination["id"], lease, RetryPolicy())
    assert claim is not None
    # Its calls may be under way, for all another worker knows: the rows it did not claim wait.
    assert await deliver_destination_once(relay.context, destination["id"]) == 0
    assert receiver.requests == []
    await expire_leases(engine)  # its lease runs out (rather than waiting 30 s for it)
    assert await deliver_all(relay.context) == 20
    assert len(receiver.events()) == 20
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 20, "dead": 0}


CLAIM = "UPDATE outbox_items SET attempts=(outbox_items.attempts +"  # a claim takes its rows


@contextlib.contextmanager
def on_statement(engine: AsyncEngine, starts: str, then: Callable[[], None]) -> Iterator[None]:
    """Call `then` (in the engine's greenlet, so it may await_) before each statement that begins so."""

    def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith(starts):
            then()

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)


async def claim(engine: AsyncEngine, destination_id: int) -> Claim | None:
    async with engine.begin() as conn:
        return await claims.claim_due(conn, destination_id, timedelta(minutes=5), RetryPolicy())


async def test_claims_that_count_at_once_take_the_free_calls_once(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, workers: list[Context]
) -> None:
    """A claim that reads the free calls while another has read them but not yet taken its rows: on
    PostgreSQL it finds the destination taken; on SQLite the UPDATE that comes second counts again
    and takes nothing. Either way the calls are taken once."""
    destination = await add_destination(api, receiver.url, batch_size=2, concurrent_calls=CALLS)
    await ingest(api, [make_event() for _ in range(20)])
    first, second = (worker.engine for worker in workers)
    counted, go_on, second_claims = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def pause() -> None:  # the first claim has read the free calls: it waits before it takes them
        counted.set()
        await_(go_on.wait())

    with on_statement(first, CLAIM, pause), on_statement(second, CLAIM, second_claims.set):
        taking = asyncio.create_task(claim(first, destination["id"]))
        async with asyncio.timeout(WITHIN):
            await counted.wait()
        other = asyncio.create_task(claim(second, destination["id"]))
        claims = asyncio.create_task(second_claims.wait())
        # Until the second claim has given up, or is taking its rows too.
        await asyncio.wait([other, claims], timeout=WITHIN, return_when=asyncio.FIRST_COMPLETED)
        go_on.set()
        claims.cancel()
        async with asyncio.timeout(WITHIN):
            taken = await asyncio.gather(taking, other)
    assert sorted(got.calls if got else 0 for got in taken) == [0, CALLS]
