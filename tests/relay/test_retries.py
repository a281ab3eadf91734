"""Retries, backoff, dead letters, outages and lease recovery, against a real receiver."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app import claims, outbox
from app.config import Settings
from app.delivery import deliver_once
from app.models import OutboxItem
from app.retry import Outcome, RetryPolicy
from tests.conftest import LiveServer
from tests.factories import make_event
from tests.relay.conftest import (
    SLOW_BACKOFF,
    add_destination,
    deliver_all,
    expire_leases,
    ingest,
    next_round,
    statuses,
)
from tests.relay.receiver import Answer, Receiver


async def rows(engine: AsyncEngine) -> list[OutboxItem]:
    async with engine.connect() as conn:
        return list(await conn.execute(select(OutboxItem).order_by(OutboxItem.id)))  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503])
async def test_retryable_answers_are_retried_until_delivered(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine, code: int
) -> None:
    destination = await add_destination(api, receiver.url)
    await ingest(api, [make_event()])
    receiver.answer(Answer(code, body=b"busy, come back later"), code)

    assert await deliver_once(relay.context) == 1
    [row] = await rows(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("failed", 1, code)
    assert row.last_error == f"HTTP {code}: busy, come back later"
    assert row.last_attempt_at is not None
    assert row.next_attempt_at > row.last_attempt_at
    listed = (await api.get("/api/deliveries", params={"status": "failed"})).json()["items"]
    assert listed[0]["last_error"] == row.last_error
    assert listed[0]["next_attempt_at"] is not None

    assert await next_round(relay.context) == 1
    assert await next_round(relay.context) == 1
    [row] = await rows(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 3, 200)
    assert len(receiver.requests) == 3
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1  # stable across retries
    health = (await api.get(f"/api/destinations/{destination['id']}")).json()["health"]
    assert health["status"] == "ok"
    assert health["last_success_at"]
    assert health["last_failure_at"]


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 413, 422])
async def test_other_4xx_answers_are_permanent(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine, code: int
) -> None:
    await add_destination(api, receiver.url)
    await ingest(api, [make_event()])
    receiver.answer(Answer(code, body=b"no such hook " + b"x" * 5000))

    await deliver_once(relay.context)
    [row] = await rows(engine)
    assert (row.status, row.attempts, row.last_status_code) == ("dead", 1, code)
    assert row.last_error is not None
    assert len(row.last_error) <= 320
    assert await next_round(relay.context) == 0
    assert len(receiver.requests) == 1


async def test_a_3xx_is_not_followed_and_is_retried(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    await add_destination(api, receiver.url)
    await ingest(api, [make_event()])
    receiver.answer(Answer(301, {"location": "http://127.0.0.1:9/elsewhere"}))
    await deliver_once(relay.context)
    assert (await rows(engine))[0].status == "failed"
    assert await next_round(relay.context) == 1
    assert (await rows(engine))[0].status == "delivered"


async def test_max_attempts_make_a_dead_letter(
    relay_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    live = await start_server(relay_settings(delivery_max_attempts=3))
    async with httpx.AsyncClient(
        base_url=live.base_url, headers={"Authorization": "admin-token-for-tests"}
    ) as api:
        await add_destination(api, receiver.url)
        await ingest(api, [make_event()])
        receiver.default = Answer(503)
        await deliver_once(live.context)
        await next_round(live.context)
        assert (await rows(engine))[0].status == "failed"
        await next_round(live.context)
        [row] = await rows(engine)
        assert (row.status, row.attempts) == ("dead", 3)
        assert await next_round(live.context) == 0
        assert len(receiver.requests) == 3
        dead = (await api.get("/api/deliveries", params={"status": "dead"})).json()["items"]
        assert [d["id"] for d in dead] == [row.id]


async def test_rows_older_than_max_age_go_to_dead_letter_unsent(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    await add_destination(api, receiver.url)
    await ingest(api, [make_event(), make_event()])
    old = datetime.now(UTC) - timedelta(days=3, seconds=1)
    async with engine.begin() as conn:
        first = await conn.scalar(select(OutboxItem.id).order_by(OutboxItem.id).limit(1))
        await conn.execute(update(OutboxItem).where(OutboxItem.id == first).values(created_at=old))
    await deliver_once(relay.context)
    expired, fresh = await rows(engine)
    assert (expired.status, expired.attempts) == ("dead", 0)
    assert expired.last_error is not None
    assert expired.last_error.startswith("expired")
    assert fresh.status == "delivered"
    assert len(receiver.events()) == 1


async def test_retry_after_is_honoured(
    relay_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    live = await start_server(relay_settings(delivery_backoff_max=600.0))
    async with httpx.AsyncClient(
        base_url=live.base_url, headers={"Authorization": "admin-token-for-tests"}
    ) as api:
        destination = await add_destination(api, receiver.url)
        await ingest(api, [make_event()])
        receiver.answer(Answer(429, {"retry-after": "120"}))
        before = datetime.now(UTC)
        await deliver_once(live.context)
        [row] = await rows(engine)
        assert row.status == "failed"
        assert row.next_attempt_at >= before + timedelta(seconds=120)
        assert await deliver_once(live.context) == 0  # not due yet
        health = (await api.get(f"/api/destinations/{destination['id']}")).json()["health"]
        assert health["status"] == "failing"
        assert health["consecutive_failures"] == 1
        assert health["backlog"] == 1
        assert health["oldest_pending_age_seconds"] >= 0


async def test_a_destination_that_is_down_costs_one_attempt_per_backoff_step(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    destination = await add_destination(api, receiver.url, batch_size=10, concurrent_calls=2)
    await ingest(api, [make_event() for _ in range(100)])
    receiver.default = Answer(503)

    await deliver_once(relay.context)  # a healthy destination: every concurrent slot is used
    assert len(receiver.requests) == 2
    for step in range(1, 6):
        await next_round(relay.context)  # failing: one probe batch per step
        assert len(receiver.requests) == 2 + step
    attempts = Counter(row.attempts for row in await rows(engine))
    assert attempts == {0: 80, 1: 10, 6: 10}  # the probe batch is the same ten rows each time
    assert len({r.headers["webhook-id"] for r in receiver.requests[2:]}) == 1

    receiver.default = Answer(200)  # back up: the probe succeeds, then everything flows
    await next_round(relay.context)
    await deliver_all(relay.context)
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 100, "dead": 0}


async def test_a_probe_is_one_request_however_many_batches_wait(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    """Low traffic during an outage: an event comes between probes. Each probe sends the failed
    batch again, alone; the events that came meanwhile wait, and go as one batch once it is up."""
    destination = await add_destination(api, receiver.url, batch_size=100, concurrent_calls=5)
    receiver.default = Answer(503)
    for step in range(1, 7):
        await ingest(api, [make_event()])
        await next_round(relay.context)
        assert len(receiver.requests) == step
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert Counter(row.attempts for row in await rows(engine)) == {6: 1, 0: 5}

    receiver.default = Answer(200)
    await next_round(relay.context)  # the probe succeeds
    await deliver_all(relay.context)
    assert [len(r.json()) for r in receiver.requests[6:]] == [1, 5]
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 6, "dead": 0}


async def test_receiver_down_then_back_delivers_everything(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    destination = await add_destination(api, receiver.url, batch_size=5, concurrent_calls=3)
    events = [make_event() for _ in range(40)]
    await ingest(api, events[:20])
    port = receiver.port
    await receiver.stop()  # connection refused from now on

    await deliver_once(relay.context)
    await ingest(api, events[20:])  # more arrive during the outage
    for _ in range(3):
        await next_round(relay.context)
    counts = await statuses(api, destination["id"])
    assert counts["delivered"] == 0
    assert counts["pending"] + counts["failed"] == 40
    failed = (await api.get("/api/deliveries", params={"status": "failed"})).json()["items"]
    assert failed
    assert failed[0]["last_status_code"] is None
    assert "ConnectError" in failed[0]["last_error"]

    await receiver.start(port)
    await next_round(relay.context)
    await deliver_all(relay.context)
    received = Counter(e["log_id"] for e in receiver.events())
    assert set(received) == {e["log_id"] for e in events}  # nothing missing
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 40, "dead": 0}


async def test_a_killed_worker_rows_are_sent_after_the_lease_expires(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    settings = relay.context.settings  # a lease of 30 s: still running whatever the machine's speed
    destination = await add_destination(api, receiver.url)
    await ingest(api, [make_event() for _ in range(3)])
    # A worker claims the rows and dies before sending or recording anything.
    async with engine.begin() as conn:
        claim = await claims.claim_due(conn, destination["id"], settings.delivery_lease, RetryPolicy())
    assert claim is not None
    assert len(claim.items) == 3
    assert await deliver_once(relay.context) == 0  # leased: nobody else sends them
    await expire_leases(engine)  # the lease runs out (rather than waiting 30 s for it)
    assert await deliver_once(relay.context) == 3
    assert len(receiver.events()) == 3
    assert {row.status for row in await rows(engine)} == {"delivered"}
    # Should the first worker wake up, it cannot settle rows that another worker has taken over.
    async with engine.begin() as conn:
        await outbox.record_outcomes(conn, claim, [(claim.items, Outcome(500))], RetryPolicy())
    assert {row.status for row in await rows(engine)} == {"delivered"}


async def test_a_receiver_that_never_answers_times_out_and_is_retried(
    relay_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    live = await start_server(relay_settings(delivery_timeout=0.2))
    async with httpx.AsyncClient(
        base_url=live.base_url, headers={"Authorization": "admin-token-for-tests"}
    ) as api:
        await add_destination(api, receiver.url)
        await ingest(api, [make_event()])
    receiver.hold = asyncio.Event()
    assert await deliver_once(live.context) == 1
    [row] = await rows(engine)
    assert (row.status, row.last_status_code, row.last_error) == ("failed", None, "timed out after 0.2s")
    receiver.hold.set()
    assert await next_round(live.context) == 1
    assert (await rows(engine))[0].status == "delivered"


async def test_in_single_mode_an_outage_stops_the_round_at_the_first_failures(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    destination = await add_destination(api, receiver.url, send_as_batch=False, concurrent_calls=2)
    await ingest(api, [make_event() for _ in range(20)])
    receiver.default = Answer(503)
    await deliver_once(relay.context)
    assert len(receiver.requests) == 2  # the calls already under way; the rest of the round is not sent
    attempts = Counter(row.attempts for row in await rows(engine))
    assert attempts == {0: 18, 1: 2}
    await next_round(relay.context)
    assert len(receiver.requests) == 3  # then one probe per backoff step
    receiver.default = Answer(200)
    await next_round(relay.context)
    await deliver_all(relay.context)
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 20, "dead": 0}


@pytest.mark.parametrize("relay", [SLOW_BACKOFF], indirect=True)
@pytest.mark.parametrize("batch", [False, True])
async def test_a_rejected_event_does_not_hold_up_the_others(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine, batch: bool
) -> None:
    """A 4xx is about those events, not about the destination: no backoff, the rest goes on."""
    destination = await add_destination(
        api, receiver.url, send_as_batch=batch, batch_size=2, concurrent_calls=1
    )
    await ingest(api, [make_event() for _ in range(8)])
    receiver.answer(*[Answer(400, body=b"schema mismatch")] * 3)  # the first three requests are refused

    await deliver_all(relay.context)
    refused = 3 * (2 if batch else 1)
    assert await statuses(api, destination["id"]) == {
        "pending": 0,
        "failed": 0,
        "delivered": 8 - refused,
        "dead": refused,
    }
    health = (await api.get(f"/api/destinations/{destination['id']}")).json()["health"]
    assert (health["status"], health["consecutive_failures"], health["next_attempt_at"]) == ("ok", 0, None)
    assert health["last_error"] == "HTTP 400: schema mismatch"
    assert health["last_failure_at"] is not None
    assert {row.attempts for row in await rows(engine)} == {1}


async def test_a_failed_batch_is_retried_as_the_same_batch_under_the_same_webhook_id(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    await add_destination(api, receiver.url, batch_size=10, concurrent_calls=1)
    first = [make_event(type="f") for _ in range(3)]
    await ingest(api, first)
    receiver.answer(500)  # the receiver may have stored it before failing: the id is its only clue
    assert await deliver_once(relay.context) == 3
    [failed] = receiver.requests
    batch_id = failed.headers["webhook-id"]
    assert {row.batch_id for row in await rows(engine)} == {batch_id}

    later = [make_event(type="f") for _ in range(4)]
    await ingest(api, later)  # room for them in the failed batch: they go in a batch of their own
    assert await next_round(relay.context) == 3  # the probe: the failed batch alone
    assert await deliver_once(relay.context) == 4  # back up: the others
    retried, fresh = receiver.requests[1:]
    assert retried.headers["webhook-id"] == batch_id
    assert retried.json() == failed.json()
    assert [e["log_id"] for e in fresh.json()] == [e["log_id"] for e in later]
    assert fresh.headers["webhook-id"] != batch_id
    assert {row.status for row in await rows(engine)} == {"delivered"}


def test_batches_keep_a_failed_batch_whole_and_alone() -> None:
    now = datetime.now(UTC)

    def item(row_id: int, batch_id: str | None) -> claims.ClaimedItem:
        return claims.ClaimedItem(row_id, f"log-{row_id}", 1, now, batch_id)

    claimed = [item(1, "b1"), item(2, "b1"), item(3, None), item(4, "b2"), item(5, None), item(6, "b1")]
    chunks = claims.batches(claimed, 2)
    assert [[i.id for i in chunk] for chunk in chunks] == [[1, 2], [3, 5], [4], [6]]


@pytest.mark.parametrize("value", ["\u00b2", "Mon, 23 Nov 2026 12:00:00 +99999999999999999999"])
async def test_a_retry_after_that_cannot_be_read_is_ignored(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine, value: str
) -> None:
    """A 503 stays a 503 whatever its Retry-After says: retried, not a dead letter."""
    await add_destination(api, receiver.url)
    await ingest(api, [make_event()])
    receiver.answer(Answer(503, {"retry-after": value}, body=b"busy"))
    await deliver_once(relay.context)
    [row] = await rows(engine)
    assert (row.status, row.last_status_code, row.last_error) == ("failed", 503, "HTTP 503: busy")
    assert await next_round(relay.context) == 1
    assert (await rows(engine))[0].status == "delivered"
