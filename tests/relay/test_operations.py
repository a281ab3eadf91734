"""Operating the relay: list deliveries, retry one or all dead letters, replay, health."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app import claims, deliveries, outbox
from app.delivery import deliver_destination_once, deliver_once
from app.destinations import DestinationSpec, sync_env_destinations
from app.housekeeping import purge_delivered
from app.models import Destination, OutboxItem
from app.outbox import new_item, queue
from app.retention import Pace
from app.retry import Outcome, RetryPolicy
from tests.conftest import LiveServer, is_postgres, statements_naming
from tests.factories import make_event
from tests.relay.conftest import SLOW_BACKOFF, add_destination, deliver_all, ingest, statuses
from tests.relay.receiver import Answer, Receiver


async def test_list_filters_and_pages(relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver) -> None:
    one = await add_destination(api, receiver.url, name="one", batch_size=1, concurrent_calls=1)
    two = await add_destination(api, receiver.url, name="two")
    await ingest(api, [make_event() for _ in range(3)])
    receiver.answer(400)  # destination one's first row dies; everything else is delivered
    await deliver_destination_once(relay.context, one["id"])
    await deliver_destination_once(relay.context, two["id"])

    everything = (await api.get("/api/deliveries")).json()
    assert len(everything["items"]) == 6
    assert everything["next"] is None
    ids = [item["id"] for item in everything["items"]]
    assert ids == sorted(ids, reverse=True)  # newest first

    page = (await api.get("/api/deliveries", params={"limit": 4})).json()
    rest = (await api.get("/api/deliveries", params={"limit": 4, "before": page["next"]})).json()
    assert [i["id"] for i in page["items"] + rest["items"]] == ids
    assert rest["next"] is None

    mine = (await api.get("/api/deliveries", params={"destination": two["id"]})).json()["items"]
    assert {i["destination_id"] for i in mine} == {two["id"]}
    assert len(mine) == 3
    dead = (await api.get("/api/deliveries", params={"status": "dead"})).json()["items"]
    assert [(d["destination_id"], d["attempts"], d["last_status_code"]) for d in dead] == [
        (one["id"], 1, 400)
    ]
    assert dead[0]["next_attempt_at"] is None
    assert dead[0]["in_flight"] is False
    delivered = (
        await api.get("/api/deliveries", params={"destination": one["id"], "status": "delivered"})
    ).json()
    assert [d["last_status_code"] for d in delivered["items"]] == [200, 200]

    bad = await api.get("/api/deliveries", params={"status": "lost"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["parameter"] == "status"


async def test_retry_one_delivery_and_all_dead_letters(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    destination = await add_destination(api, receiver.url, send_as_batch=False)
    await ingest(api, [make_event() for _ in range(4)])
    receiver.default = Answer(422, body=b"schema mismatch")  # a receiver-side bug
    await deliver_all(relay.context)
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 0, "dead": 4}

    receiver.default = Answer(200)  # fixed
    dead = (await api.get("/api/deliveries", params={"status": "dead"})).json()["items"]
    retried = await api.post(f"/api/deliveries/{dead[0]['id']}/retry")
    assert retried.status_code == 200
    assert (retried.json()["status"], retried.json()["attempts"]) == ("pending", 0)
    await deliver_all(relay.context)
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 1, "dead": 3}

    bulk = await api.post(f"/api/destinations/{destination['id']}/retry-dead")
    assert bulk.json() == {"queued": 3}
    await deliver_all(relay.context)
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 4, "dead": 0}
    assert len(receiver.requests) == 4 + 4

    assert (await api.post("/api/deliveries/999999/retry")).status_code == 404
    assert (await api.post("/api/destinations/999999/retry-dead")).status_code == 404


async def test_a_retry_leaves_alone_a_row_claimed_while_it_was_asked(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    """A worker claims the row after the retry could have read it unleased, before its write: the
    worker's transaction holds the row (PostgreSQL) or the write lock (SQLite) until the retry's
    UPDATE is under way, then commits."""
    destination = await add_destination(api, receiver.url, send_as_batch=False)
    await ingest(api, [make_event()])
    settings, policy = relay.context.settings, RetryPolicy()
    updating = asyncio.Event()

    def on_execute(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith("UPDATE outbox_items"):
            updating.set()

    sync_engine = relay.context.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", on_execute)
    try:
        async with engine.begin() as conn:  # worker A
            claim = await claims.claim_due(conn, destination["id"], settings.delivery_lease, policy)
            assert claim is not None
            [row] = claim.items
            retry = asyncio.create_task(api.post(f"/api/deliveries/{row.id}/retry"))
            await updating.wait()
        answer = await retry
    finally:
        event.remove(sync_engine, "before_cursor_execute", on_execute)

    assert answer.status_code == 409, answer.text
    async with engine.connect() as conn:
        lease = (await conn.execute(select(OutboxItem.lease_until, OutboxItem.lease_calls))).one()
    assert tuple(lease) == (claim.lease_until, claim.calls)  # worker A still holds it, and its call
    async with engine.begin() as conn:  # worker B finds nothing to send
        assert await claims.claim_due(conn, destination["id"], settings.delivery_lease, policy) is None
        await outbox.record_outcomes(conn, claim, [(claim.items, Outcome(200))], policy)  # A's answer
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 1, "dead": 0}


async def test_replay_requeues_stored_events(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    events = [
        make_event(type="f", date="2026-11-20T10:00:00.000Z"),
        make_event(type="fp", date="2026-11-21T10:00:00.000Z"),
        make_event(type="s", date="2026-11-21T11:00:00.000Z"),
        make_event(type="f", date="2026-11-22T10:00:00.000Z"),
    ]
    await ingest(api, events)  # stored before the destination existed: nothing queued
    destination = await add_destination(api, receiver.url)
    assert await deliver_once(relay.context) == 0
    replay = f"/api/destinations/{destination['id']}/replay"

    answer = await api.post(replay, params={"since": "2026-11-21T00:00:00Z", "until": "2026-11-22T10:00:00Z"})
    assert answer.status_code == 200
    assert answer.json() == {"queued": 1}
    again = await api.post(replay, params={"since": "2026-11-21T00:00:00Z"})
    assert again.json() == {"queued": 1}  # fp waits already: only the f of the 22nd is new
    await deliver_all(relay.context)
    assert sorted(e["log_id"] for e in receiver.events()) == sorted(
        [events[1]["log_id"], events[3]["log_id"]]
    )

    by_type = await api.post(replay, params={"type": "s,fp"})  # an explicit type list replaces the filter
    assert by_type.json() == {"queued": 2}
    everything = await api.post(replay)
    assert everything.json() == {"queued": 2}  # the destination's filter: the two f events
    await deliver_all(relay.context)
    assert len(receiver.events()) == 6

    assert (await api.post(replay, params={"type": "nope"})).status_code == 422
    wrong_way = await api.post(
        replay, params={"since": "2026-11-22T00:00:00Z", "until": "2026-11-21T00:00:00Z"}
    )
    assert wrong_way.status_code == 422
    assert (await api.post(replay, params={"since": "yesterday"})).status_code == 422
    assert (await api.post("/api/destinations/999/replay")).status_code == 404


async def test_replay_honours_api_endpoints(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    def sapi(path: str) -> dict[str, object]:
        return make_event(type="sapi", details={"request": {"path": path}, "response": {}})

    users, clients = sapi("/api/v2/users/1"), sapi("/api/v2/clients")
    await ingest(api, [users, clients])
    destination = await add_destination(
        api, receiver.url, types=["sapi"], categories=[], api_endpoints=["users"], payload="raw"
    )
    answer = await api.post(f"/api/destinations/{destination['id']}/replay")
    assert answer.json() == {"queued": 1}
    await deliver_all(relay.context)
    assert receiver.events() == [users]


@pytest.mark.parametrize("oldest", ["pending", "failed"])
async def test_health_dates_the_backlog_by_its_oldest_open_row(
    oldest: str, relay: LiveServer, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    destination = await add_destination(api, "http://127.0.0.1:9/hook")
    now = datetime.now(UTC).replace(microsecond=0)

    def row(status: str, age: float, due_in: float = 0) -> dict[str, Any]:
        created = now - timedelta(hours=age)
        due = {"created_at": created, "next_attempt_at": created + timedelta(hours=due_in)}
        return new_item(destination["id"], f"{status}-{age}") | due | {"status": status}

    older, newer = (3, 1) if oldest == "pending" else (1, 3)
    rows = [
        row("delivered", 9),  # gone from the backlog, as dead letters are
        row("dead", 8),
        row("pending", older),
        row("pending", 0.5),
        row("failed", newer, due_in=newer + 1),  # retried later than any row was created
        row("failed", 0.25, due_in=1),
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(OutboxItem), rows)
    health = (await api.get(f"/api/destinations/{destination['id']}")).json()["health"]
    assert datetime.fromisoformat(health["oldest_pending_at"]) == now - timedelta(hours=3)
    assert health["oldest_pending_age_seconds"] >= 3 * 3600
    assert health["backlog"] == 4


async def test_a_row_created_while_the_health_is_read_is_not_younger_than_zero(
    relay: LiveServer, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """PostgreSQL's now() is when the reading transaction began: a row queued after that is still read."""
    destination = await add_destination(api, "http://127.0.0.1:9/hook")
    async with engine.connect() as reader:
        await reader.execute(select(1))  # the scrape's transaction has begun
        await asyncio.sleep(0.05)  # so that the row below is created measurably later
        async with engine.begin() as writer:
            await writer.execute(
                queue(writer.dialect.name), [new_item(destination["id"], "queued-meanwhile")]
            )
        health = await deliveries.destination_health(reader, destination["id"])
    assert health["backlog"] == 1
    assert health["oldest_pending_age_seconds"] >= 0


async def test_health_shows_backlog_and_failures(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    destination = await add_destination(api, receiver.url, batch_size=2, concurrent_calls=1)
    await ingest(api, [make_event() for _ in range(5)])
    health = (await api.get(f"/api/destinations/{destination['id']}")).json()["health"]
    assert health["backlog"] == 5
    assert health["oldest_pending_age_seconds"] >= 0
    assert health["last_success_at"] is None
    assert health["last_failure_at"] is None

    receiver.answer(Answer(503, body=b"maintenance"))
    await deliver_once(relay.context)
    health = (await api.get(f"/api/destinations/{destination['id']}")).json()["health"]
    assert health["status"] == "failing"
    assert health["last_error"] == "HTTP 503: maintenance"
    assert health["last_failure_at"] is not None
    assert health["next_attempt_at"] is not None
    assert health["backlog"] == 5
    assert health["counts"]["failed"] == 2


async def test_deleting_a_destination_drops_its_queue(relay: LiveServer, api: httpx.AsyncClient) -> None:
    keep = await add_destination(api, "http://127.0.0.1:9/keep", name="keep")
    gone = await add_destination(api, "http://127.0.0.1:9/gone", name="gone")
    await ingest(api, [make_event(), make_event()])
    assert (await api.delete(f"/api/destinations/{gone['id']}")).status_code == 204
    items = (await api.get("/api/deliveries")).json()["items"]
    assert {i["destination_id"] for i in items} == {keep["id"]}
    assert len(items) == 2


async def test_old_delivered_rows_are_purged_and_dead_letters_kept(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    await add_destination(api, receiver.url, send_as_batch=False, concurrent_calls=1)
    await ingest(api, [make_event() for _ in range(3)])
    receiver.answer(404)  # the first one dies
    await deliver_all(relay.context)
    assert await purge_delivered(relay.context) == 0  # delivered just now: kept

    long_ago = datetime.now(UTC) - timedelta(days=8)
    async with engine.begin() as conn:
        first = await conn.scalar(select(func.min(OutboxItem.id)).where(OutboxItem.status == "delivered"))
        await conn.execute(
            update(OutboxItem)
            .where(OutboxItem.status.in_(["delivered", "dead"]), OutboxItem.id <= first)
            .values(delivered_at=long_ago, next_attempt_at=long_ago, created_at=long_ago)
        )
    assert await purge_delivered(relay.context) == 1
    left = (await api.get("/api/deliveries")).json()["items"]
    assert sorted(i["status"] for i in left) == ["dead", "delivered"]


async def test_delivered_rows_are_purged_a_chunk_at_a_time_until_stopped(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    destination = await add_destination(api, receiver.url, send_as_batch=False)
    await ingest(api, [make_event() for _ in range(5)])
    await deliver_all(relay.context)
    long_ago = datetime.now(UTC) - timedelta(days=8)
    async with engine.begin() as conn:
        await conn.execute(update(OutboxItem).values(delivered_at=long_ago, next_attempt_at=long_ago))

    stopped = asyncio.Event()
    stopped.set()
    assert await purge_delivered(relay.context, stopped) == 0  # a stopping worker starts no chunk
    with statements_naming(relay.context.engine, "DELETE FROM outbox_items") as deletes:
        assert await purge_delivered(relay.context, pace=Pace(chunk=2, pause=0)) == 5
    assert len(deletes) == 3
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 0, "dead": 0}


@pytest.mark.parametrize("relay", [SLOW_BACKOFF], indirect=True)
async def test_fixing_a_destination_ends_its_backoff(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    destination = await add_destination(api, "http://127.0.0.1:9/refused", send_as_batch=False)
    await ingest(api, [make_event()])
    assert await deliver_once(relay.context) == 1
    await ingest(api, [make_event()])
    health = (await api.get(f"/api/destinations/{destination['id']}")).json()["health"]
    assert (health["status"], health["counts"]["failed"], health["backlog"]) == ("failing", 1, 2)
    assert await deliver_once(relay.context) == 0  # backed off for ten minutes

    renamed = await api.patch(f"/api/destinations/{destination['id']}", json={"name": "other"})
    assert renamed.status_code == 200  # not a delivery setting: the backoff goes on
    after = (await api.get(f"/api/destinations/{destination['id']}")).json()["health"]
    kept = ("status", "consecutive_failures", "next_attempt_at", "counts")
    assert {key: after[key] for key in kept} == {key: health[key] for key in kept}
    assert await deliver_once(relay.context) == 0

    fixed = await api.patch(f"/api/destinations/{destination['id']}", json={"url": receiver.url})
    assert fixed.status_code == 200
    health = (await api.get(f"/api/destinations/{destination['id']}")).json()["health"]
    assert (health["status"], health["consecutive_failures"], health["next_attempt_at"]) == ("ok", 0, None)
    await deliver_all(relay.context)  # at once: the failed row too
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 2, "dead": 0}
    assert len(receiver.requests) == 2


@pytest.mark.parametrize("relay", [SLOW_BACKOFF], indirect=True)
async def test_retry_failed_rows_in_bulk(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    destination = await add_destination(api, receiver.url, batch_size=2, concurrent_calls=1)
    await ingest(api, [make_event() for _ in range(4)])
    receiver.answer(503)
    await deliver_once(relay.context)
    assert await statuses(api, destination["id"]) == {"pending": 2, "failed": 2, "delivered": 0, "dead": 0}
    assert await deliver_once(relay.context) == 0  # backed off for ten minutes

    retried = await api.post(f"/api/destinations/{destination['id']}/retry-failed")
    assert retried.json() == {"queued": 2}
    pending = (await api.get("/api/deliveries", params={"status": "pending"})).json()["items"]
    assert {d["attempts"] for d in pending} == {0}
    await deliver_all(relay.context)
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 4, "dead": 0}
    assert (await api.post("/api/destinations/999999/retry-failed")).status_code == 404


async def test_a_changed_environment_ends_the_backoff(engine: AsyncEngine) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    spec = DestinationSpec(name="forward", url="https://a.example.com/in")
    async with engine.begin() as conn:
        await sync_env_destinations(conn, [spec], timedelta(days=1))
        await conn.execute(update(Destination).values(consecutive_failures=7, backoff_until=later))
        await sync_env_destinations(
            conn, [spec], timedelta(days=1)
        )  # a restart with the same settings: still backed off
        same = (await conn.execute(select(Destination.consecutive_failures))).scalar_one()
        await sync_env_destinations(
            conn, [DestinationSpec(name="forward", url="https://b.example.com/in")], timedelta(days=1)
        )
        changed = (
            await conn.execute(select(Destination.consecutive_failures, Destination.backoff_until))
        ).one()
    assert same == 7
    assert tuple(changed) == (0, None)


async def test_replay_commits_a_page_at_a_time_and_checks_each_page_once(
    relay: LiveServer,
    api: httpx.AsyncClient,
    receiver: Receiver,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long replay must not hold the write lock, nor look through the whole backlog for each event."""
    monkeypatch.setattr(deliveries, "REPLAY_CHUNK", 10)
    events = [make_event(date=f"2026-11-20T10:00:{i:02d}.000Z") for i in range(35)]
    await ingest(api, events)
    destination = await add_destination(api, receiver.url)
    replay = f"/api/destinations/{destination['id']}/replay"
    assert (await api.post(replay, params={"until": "2026-11-20T10:00:15Z"})).json() == {"queued": 15}

    commits: list[object] = []
    checks: list[tuple[str, Any]] = []

    def on_commit(conn: object) -> None:
        commits.append(conn)

    def on_execute(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT") and "FROM outbox_items" in statement:
            checks.append((statement, parameters))

    sync_engine = relay.context.engine.sync_engine
    event.listen(sync_engine, "commit", on_commit)
    event.listen(sync_engine, "before_cursor_execute", on_execute)
    try:
        answer = await api.post(replay)  # 15 wait already: 20 are queued, in four pages
    finally:
        event.remove(sync_engine, "commit", on_commit)
        event.remove(sync_engine, "before_cursor_execute", on_execute)
    assert answer.json() == {"queued": 20}
    assert len(commits) >= 4
    assert len(checks) == 4  # one look at the outbox per page
    await deliver_all(relay.context)
    assert sorted(e["log_id"] for e in receiver.events()) == sorted(e["log_id"] for e in events)

    if not is_postgres():  # the look uses the (destination_id, log_id) index, not the backlog's
        statement, parameters = checks[-1]
        async with engine.connect() as conn:
            plan = [
                row[3] for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            ]
        index = "ix_outbox_items_destination_id_log_id"
        assert plan == [f"SEARCH outbox_items USING INDEX {index} (destination_id=? AND log_id=?)"]
