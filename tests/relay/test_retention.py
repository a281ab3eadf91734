"""EVENT_RETENTION: events dated, and quarantined lines received, before now - retention are purged,
except events still waiting for a delivery. Events go in by real POSTs and are read back through the
query API; the purge is called with a chosen `now` (the loop's wiring has a test of its own)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import MAX_DURATION, Settings
from app.delivery import deliver_once
from app.housekeeping import housekeep_once
from app.models import QuarantinedLine
from app.retention import Pace, Purged, purge_expired
from tests.conftest import READ_TOKEN, LiveServer, auth, bearer, read_metrics, sample, statements_naming
from tests.factories import make_event, make_stream_body
from tests.relay.conftest import add_destination, deliver_all, ingest, next_round, statuses
from tests.relay.receiver import Receiver

RETENTION = timedelta(days=30)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CUTOFF = NOW - RETENTION
OLD = CUTOFF - timedelta(days=5)
FUTURE = "2999-01-01T00:00:00.000Z"  # never purged, whatever the clock says
GONE = "the event is no longer stored"


@pytest.fixture
async def relay(relay_settings: Callable[..., Settings], start_server: Callable[..., Any]) -> LiveServer:
    """The relay app (workers off) with EVENT_RETENTION set."""
    server: LiveServer = await start_server(relay_settings(event_retention=RETENTION))
    return server


def a_retention_after_now() -> datetime:
    """A `now` at which what is received now is past the retention."""
    return datetime.now(UTC) + RETENTION + timedelta(seconds=1)


def iso(moment: datetime) -> str:
    """An Auth0 date: ISO 8601 UTC to the millisecond."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def stored(api: httpx.AsyncClient) -> set[str]:
    """The log ids GET /api/events lists."""
    response = await api.get("/api/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return {event["log_id"] for event in response.json()["events"]}


async def quarantined(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(QuarantinedLine)) or 0)


async def post_with_bad_lines(api: httpx.AsyncClient, events: list[dict[str, Any]], bad: int) -> None:
    """One JSON Lines body: the events, then `bad` lines that are not JSON (quarantined)."""
    body = make_stream_body(events) + b"".join(b"{not json %d\n" % n for n in range(bad))
    response = await api.post("/api/logs", content=body, headers=auth())
    assert response.status_code == 200, response.text
    assert response.json()["quarantined"] == bad


async def test_events_dated_before_the_retention_go_and_later_ones_stay(
    relay: LiveServer, api: httpx.AsyncClient, service_logs: pytest.LogCaptureFixture
) -> None:
    old = [make_event(date=iso(CUTOFF - timedelta(milliseconds=1))), make_event(date=iso(OLD - RETENTION))]
    kept = [make_event(date=iso(CUTOFF)), make_event(date=iso(NOW - timedelta(days=1)))]
    # Received now, long after NOW: a purge by received_at would keep every one of them.
    await ingest(api, old + kept)

    assert await purge_expired(relay.context, NOW) == Purged(events=2)
    assert await stored(api) == {event["log_id"] for event in kept}
    assert (await api.get(f"/api/events/{old[0]['log_id']}")).status_code == 404
    [line] = [r for r in service_logs.records if r.getMessage() == "purged events past the retention"]
    assert (line.levelno, line.events, line.quarantined_lines) == (logging.INFO, 2, 0)  # type: ignore[attr-defined]

    service_logs.clear()
    assert await purge_expired(relay.context, NOW) == Purged()
    assert not [r for r in service_logs.records if r.getMessage() == "purged events past the retention"]


async def test_an_event_stays_while_any_destination_has_not_delivered_it(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    live = await add_destination(api, receiver.url, name="live")
    paused = await add_destination(api, receiver.url, name="paused")
    event = make_event(date=iso(OLD), type="f")  # a failure: queued for both
    await ingest(api, [event])
    assert await purge_expired(relay.context, NOW) == Purged()  # pending for both
    # `paused` is disabled with its row pending: its row waits, and holds the event.
    assert (await api.patch(f"/api/destinations/{paused['id']}", json={"enabled": False})).status_code == 200

    receiver.answer(503)
    await deliver_once(relay.context)  # one round: deliver_all would retry once the short backoff ends
    assert (await statuses(api, live["id"]))["failed"] == 1
    assert await purge_expired(relay.context, NOW) == Purged()
    assert await stored(api) == {event["log_id"]}

    await next_round(relay.context)  # `live` delivers now
    assert (await statuses(api, live["id"]))["delivered"] == 1
    assert await purge_expired(relay.context, NOW) == Purged()  # `paused` still has it to send
    assert await stored(api) == {event["log_id"]}

    assert (await api.patch(f"/api/destinations/{paused['id']}", json={"enabled": True})).status_code == 200
    await deliver_all(relay.context)
    assert (await statuses(api, paused["id"]))["delivered"] == 1
    assert await purge_expired(relay.context, NOW) == Purged(events=1)
    assert await stored(api) == set()


async def test_a_dead_letter_does_not_keep_its_event_and_a_retry_then_dies_again(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    destination = await add_destination(api, receiver.url, send_as_batch=False)
    event = make_event(date=iso(OLD), type="f")
    await ingest(api, [event])
    receiver.answer(400)
    await deliver_all(relay.context)
    assert (await statuses(api, destination["id"]))["dead"] == 1

    assert await purge_expired(relay.context, NOW) == Purged(events=1)
    [dead] = (await api.get("/api/deliveries", params={"status": "dead"})).json()["items"]
    retried = await api.post(f"/api/deliveries/{dead['id']}/retry")
    assert retried.json()["status"] == "pending"
    await deliver_all(relay.context)

    [again] = (await api.get("/api/deliveries", params={"status": "dead"})).json()["items"]
    assert (again["id"], again["last_error"]) == (dead["id"], GONE)
    assert len(receiver.requests) == 1  # the first attempt only: nothing is sent for a purged event


async def test_quarantined_lines_go_by_when_they_were_received(
    relay: LiveServer, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    posted = datetime.now(UTC)  # the lines are received at or after this
    await post_with_bad_lines(api, [make_event(date=FUTURE)], 2)
    assert await purge_expired(relay.context, posted + RETENTION) == Purged()
    assert await quarantined(engine) == 2
    assert await purge_expired(relay.context, a_retention_after_now()) == Purged(quarantined_lines=2)
    assert await quarantined(engine) == 0


async def test_without_a_retention_nothing_is_purged(
    relay_settings: Callable[..., Settings], start_server: Callable[..., Any], engine: AsyncEngine
) -> None:
    server: LiveServer = await start_server(relay_settings())
    async with httpx.AsyncClient(base_url=server.base_url, headers=bearer(READ_TOKEN)) as api:
        events = [make_event(date="2001-01-01T00:00:00.000Z"), make_event()]
        await post_with_bad_lines(api, events, 1)
        far = datetime.now(UTC) + timedelta(days=36500)
        assert await purge_expired(server.context, far) == Purged()
        assert await stored(api) == {event["log_id"] for event in events}
    assert await quarantined(engine) == 1


async def test_more_rows_than_a_chunk_all_go_and_held_ones_are_passed_once(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    await add_destination(api, receiver.url)  # takes failures: the two oldest events wait for it
    held = [make_event(date=iso(OLD - timedelta(days=1)), type="f") for _ in range(2)]
    tied = [make_event(date=iso(OLD), type="s") for _ in range(7)]  # one date across chunk ends
    others = [make_event(date=iso(OLD + timedelta(hours=h)), type="s") for h in (1, 2)]
    kept = make_event(date=FUTURE, type="s")
    await post_with_bad_lines(api, [*held, *tied, *others, kept], 5)
    pace = Pace(chunk=3, pause=0)

    with statements_naming(relay.context.engine, "DELETE FROM log_events") as deletes:
        assert await purge_expired(relay.context, NOW, pace=pace) == Purged(events=9, quarantined_lines=0)
    assert len(deletes) == math.ceil(11 / pace.chunk)  # the kept ones are read once, not once a chunk
    assert await stored(api) == {event["log_id"] for event in [*held, kept]}

    with statements_naming(relay.context.engine, "DELETE FROM quarantined_lines") as deletes:
        assert await purge_expired(relay.context, a_retention_after_now(), pace=pace) == Purged(
            quarantined_lines=5
        )
    assert len(deletes) == 2
    assert await quarantined(engine) == 0


async def test_the_counters_count_what_was_purged(relay: LiveServer, api: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url, timeout=30) as client:
        before = await read_metrics(client)
        await post_with_bad_lines(api, [make_event(date=iso(OLD)) for _ in range(3)], 2)
        assert await purge_expired(relay.context, max(NOW, a_retention_after_now())) == Purged(3, 2)
        after = await read_metrics(client)
    for name, purged in (("logrelay_purged_events_total", 3), ("logrelay_purged_quarantined_lines_total", 2)):
        assert sample(after, name) - sample(before, name) == purged, name


async def test_a_stop_ends_the_purge_between_chunks(relay: LiveServer, api: httpx.AsyncClient) -> None:
    await ingest(api, [make_event(date=iso(OLD)) for _ in range(4)])
    stop = asyncio.Event()
    purge = asyncio.create_task(purge_expired(relay.context, NOW, stop, Pace(chunk=2, pause=600)))
    for _ in range(1000):  # a bound on waiting for the first chunk, not a timing claim
        if len(await stored(api)) == 2:
            break
        await asyncio.sleep(0.01)
    stop.set()  # during the pause after the first chunk
    assert await asyncio.wait_for(purge, 30) == Purged(events=2)
    assert len(await stored(api)) == 2


async def test_the_workers_purge_when_they_start(
    make_settings: Callable[..., Settings], start_server: Callable[..., Any]
) -> None:
    ingest_only: LiveServer = await start_server(make_settings())
    old, recent = make_event(date="2001-01-01T00:00:00.000Z"), make_event(date=iso(datetime.now(UTC)))
    async with httpx.AsyncClient(base_url=ingest_only.base_url, headers=bearer(READ_TOKEN)) as api:
        await ingest(api, [old, recent])
        await start_server(make_settings(run_workers=True, event_retention=RETENTION))
        for _ in range(3000):  # a bound on waiting for the worker's first housekeeping, not a timing claim
            if (left := await stored(api)) == {recent["log_id"]}:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"the workers did not purge: {left}")


async def test_a_failing_purge_does_not_stop_the_others(
    relay: LiveServer, api: httpx.AsyncClient, service_logs: pytest.LogCaptureFixture
) -> None:
    """The reviewer's case: a purge of delivered rows that raised (OverflowError, from a
    DELIVERY_KEEP_DELIVERED the settings now refuse) ended the run before the events' purge."""
    old, recent = make_event(date="2001-01-01T00:00:00.000Z"), make_event(date=iso(datetime.now(UTC)))
    await ingest(api, [old, recent])
    relay.context.settings.delivery_keep_delivered = timedelta(days=1_000_000)  # past validation
    await housekeep_once(relay.context)
    assert await stored(api) == {recent["log_id"]}
    [failed] = [r for r in service_logs.records if r.getMessage() == "housekeeping failed"]
    assert failed.step == "delivered outbox rows"  # type: ignore[attr-defined]
    assert failed.exc_info is not None
    assert failed.exc_info[0] is OverflowError


async def test_the_longest_durations_purge(
    relay_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    service_logs: pytest.LogCaptureFixture,
) -> None:
    """100 years, the most a duration setting takes, is "for ever" and computes a cutoff."""
    longest = relay_settings(event_retention=MAX_DURATION, delivery_keep_delivered=MAX_DURATION)
    server: LiveServer = await start_server(longest)
    async with httpx.AsyncClient(base_url=server.base_url, headers=bearer(READ_TOKEN)) as api:
        events = [make_event(date="1900-01-01T00:00:00.000Z"), make_event()]
        await ingest(api, events)
        await housekeep_once(server.context)
        assert await stored(api) == {events[1]["log_id"]}
    assert not [r for r in service_logs.records if r.getMessage() == "housekeeping failed"]
