"""Operating the relay: list deliveries, retry them, replay stored events, a destination's health.

Functions take a connection and never commit; the route's transaction does. Replay is the exception:
it takes the engine and commits a page at a time, so a long replay never holds the write lock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.auth0.catalog import CATEGORIES, LOG_TYPES
from app.db import REPLAY_LOCK, RETENTION_LOCK, db_clock, db_now, take_turns
from app.errors import Conflict, NotFound, Unprocessable
from app.filters import EventFilter
from app.models import Destination, LogEvent, OutboxItem
from app.outbox import OPEN, UNLEASED, new_item, queue

# The statuses a destination's health counts. Not "delivered": those rows are the history kept for
# DELIVERY_KEEP_DELIVERED (millions on a busy tenant) and counting them made every scrape read it all;
# logrelay_delivery_events_total counts deliveries. These three are read from the index on
# (destination_id, status, ...) and cost what the backlog and the dead letters hold.
COUNTED = (*OPEN, "dead")
REPLAY_CHUNK = 2000

_ROW = (
    OutboxItem.id,
    OutboxItem.destination_id,
    OutboxItem.log_id,
    OutboxItem.status,
    OutboxItem.attempts,
    OutboxItem.created_at,
    OutboxItem.next_attempt_at,
    OutboxItem.last_attempt_at,
    OutboxItem.delivered_at,
    OutboxItem.last_status_code,
    OutboxItem.last_error,
    OutboxItem.lease_until,
    OutboxItem.batch_id,
)


async def list_deliveries(
    conn: AsyncConnection,
    *,
    destination_id: int | None,
    status: str | None,
    limit: int,
    before: int | None,
) -> dict[str, Any]:
    """Newest first; `next` is the `before` value of the following page (None at the end)."""
    query = select(*_ROW).order_by(OutboxItem.id.desc()).limit(limit + 1)
    if destination_id is not None:
        query = query.where(OutboxItem.destination_id == destination_id)
    if status is not None:
        query = query.where(OutboxItem.status == status)
    if before is not None:
        query = query.where(OutboxItem.id < before)
    now = await db_now(conn)  # the clock leases are taken by: which rows are being sent right now
    rows = [_delivery(row._mapping, now) for row in await conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next": rows[-1]["id"] if more else None}


async def retry_delivery(conn: AsyncConnection, delivery_id: int) -> dict[str, Any]:
    """Queue one row again now, with a fresh attempt budget and age; its destination is tried at once.
    A row being sent right now is left alone (409): the UPDATE itself checks the lease, so that a
    claim committed since any read of ours keeps its row (and its share of concurrent_calls)."""
    now = await db_now(conn)  # the clock the row's lease was taken by: is it being sent right now?
    free = or_(OutboxItem.lease_until.is_(None), OutboxItem.lease_until <= now)
    retried = await conn.execute(
        update(OutboxItem)
        .where(OutboxItem.id == delivery_id, free)
        .values(**_fresh(now))
        .returning(OutboxItem.destination_id)
    )
    destination_id = retried.scalar_one_or_none()
    if destination_id is None:
        if await conn.scalar(select(OutboxItem.id).where(OutboxItem.id == delivery_id)) is None:
            raise NotFound(f"no delivery with id {delivery_id}")
        raise Conflict(f"delivery {delivery_id} is being sent right now")
    await _wake(conn, destination_id)
    changed = (await conn.execute(select(*_ROW).where(OutboxItem.id == delivery_id))).one()
    return _delivery(changed._mapping, now)


async def retry_all(conn: AsyncConnection, destination_id: int, status: Literal["dead", "failed"]) -> int:
    """Queue every `dead` (or every `failed`) row of a destination again now, with fresh attempts and
    age; rows being sent right now are left alone. Returns how many."""
    await _require(conn, destination_id)
    now = await db_now(conn)  # the clock the rows' leases were taken by
    result = await conn.execute(
        update(OutboxItem)
        .where(
            OutboxItem.destination_id == destination_id,
            OutboxItem.status == status,
            or_(OutboxItem.lease_until.is_(None), OutboxItem.lease_until <= now),
        )
        .values(**_fresh(now))
    )
    await _wake(conn, destination_id)
    return result.rowcount or 0


async def replay(
    engine: AsyncEngine,
    destination_id: int,
    *,
    since: datetime | None,
    until: datetime | None,
    types: list[str],
) -> int:
    """Queue stored events dated in [since, until) for a destination again; returns how many.

    `types` (codes or categories) replaces the destination's type filter when given; its API endpoint
    filter always applies. Events that already wait for this destination are not queued twice.
    Each page of REPLAY_CHUNK events is read, checked against the outbox with one query, and queued
    in its own short transaction: ingest waits for one page at most, and a replay cut short keeps
    the pages it committed (run it again: what waits already is skipped).
    """
    async with engine.connect() as conn:
        destination = await _require(conn, destination_id)
    unknown = [t for t in types if t not in LOG_TYPES and t not in CATEGORIES]
    if unknown:
        raise Unprocessable([{"parameter": "type", "message": f"unknown types: {', '.join(unknown)}"}])
    if types:
        wanted = EventFilter.of(
            [t for t in types if t in LOG_TYPES],
            [t for t in types if t in CATEGORIES],
            destination.api_endpoints,
        )
    else:
        wanted = EventFilter.of(destination.types, destination.categories, destination.api_endpoints)
    query = select(LogEvent.log_id, LogEvent.date, LogEvent.type, LogEvent.category)
    if wanted.api_endpoints:
        query = query.add_columns(LogEvent.data)
    if wanted.types or wanted.categories:
        query = query.where(
            or_(LogEvent.type.in_(sorted(wanted.types)), LogEvent.category.in_(sorted(wanted.categories)))
        )
    if since is not None:
        query = query.where(LogEvent.date >= since)
    if until is not None:
        query = query.where(LogEvent.date < until)
    query = query.order_by(LogEvent.date, LogEvent.log_id).limit(REPLAY_CHUNK)
    queued = 0
    after: tuple[datetime, str] | None = None
    while True:
        page = query if after is None else query.where(tuple_(LogEvent.date, LogEvent.log_id) > after)
        async with engine.begin() as conn:
            # Turns before any read: two replays at once would both queue the page, and a purge
            # chunk between this read and the queueing would delete events about to wait here.
            await take_turns(conn, REPLAY_LOCK, destination_id)
            await take_turns(conn, RETENTION_LOCK)
            rows = list(await conn.execute(page))
            if not rows:
                return queued
            await _require(conn, destination_id)  # deleted meanwhile: 404, not a foreign-key error
            queued += await _queue_page(conn, destination_id, wanted, rows)
        after = (rows[-1].date, rows[-1].log_id)


async def _queue_page(
    conn: AsyncConnection, destination_id: int, wanted: EventFilter, rows: list[Any]
) -> int:
    """Queue the page's matching events, but those already waiting for the destination; the caller
    takes turns (REPLAY_LOCK) first."""
    waiting = set(
        await conn.scalars(
            select(OutboxItem.log_id).where(
                OutboxItem.destination_id == destination_id,
                OutboxItem.status.in_(OPEN),
                OutboxItem.log_id.in_([row.log_id for row in rows]),
            )
        )
    )
    items = [
        new_item(destination_id, row.log_id)
        for row in rows
        if row.log_id not in waiting
        and wanted.matches(row.type, row.category, getattr(row, "data", None) or {})
    ]
    if items:
        await conn.execute(queue(conn.dialect.name), items)
    return len(items)


async def destination_health(conn: AsyncConnection, destination_id: int) -> dict[str, Any]:
    """Last success and failure, the backoff state, the backlog and how old its oldest row is, and the
    rows by status but delivered (see COUNTED): what this costs grows with the backlog, not history."""
    state = (
        await conn.execute(
            select(
                Destination.last_success_at,
                Destination.last_failure_at,
                Destination.last_error,
                Destination.consecutive_failures,
                Destination.backoff_until,
            ).where(Destination.id == destination_id)
        )
    ).first()
    if state is None:
        raise NotFound(f"no destination with id {destination_id}")
    counts = dict.fromkeys(COUNTED, 0)
    rows = await conn.execute(
        select(OutboxItem.status, func.count())
        .where(OutboxItem.destination_id == destination_id, OutboxItem.status.in_(COUNTED))
        .group_by(OutboxItem.status)
    )
    counts.update({row[0]: row[1] for row in rows})
    oldest = await _oldest_open(conn, destination_id)
    # After the read: a row created by a transaction that began after this one is still older.
    now = await db_clock(conn)
    failing = state.consecutive_failures > 0
    return {
        "status": "failing" if failing else "ok",
        "last_success_at": state.last_success_at,
        "last_failure_at": state.last_failure_at,
        "last_error": state.last_error,
        "consecutive_failures": state.consecutive_failures,
        "next_attempt_at": state.backoff_until if failing else None,
        "backlog": counts["pending"] + counts["failed"],
        "oldest_pending_at": oldest,
        "oldest_pending_age_seconds": round((now - oldest).total_seconds(), 3) if oldest else None,
        "counts": counts,
    }


async def _oldest_open(conn: AsyncConnection, destination_id: int) -> datetime | None:
    """When the oldest row still to deliver was created. A pending row is due since it was created
    (new_item, _fresh), so the oldest pending row is the first of the claims' index: one seek however
    long the backlog. Failed rows, fewer (a failing destination is probed a batch at a time), are read."""
    of = OutboxItem.destination_id == destination_id
    pending = select(func.min(OutboxItem.next_attempt_at)).where(of, OutboxItem.status == "pending")
    failed = select(func.min(OutboxItem.created_at)).where(of, OutboxItem.status == "failed")
    found = (await conn.execute(select(pending.scalar_subquery(), failed.scalar_subquery()))).one()
    return min((moment for moment in found if moment is not None), default=None)  # aware: UTCDateTime


def _fresh(now: datetime) -> dict[str, Any]:
    return {
        "status": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        **UNLEASED,
        "delivered_at": None,
    }


async def _wake(conn: AsyncConnection, destination_id: int) -> None:
    """An operator's retry means "now": end the destination's backoff (it still probes first)."""
    await conn.execute(
        update(Destination)
        .where(
            Destination.id == destination_id,
            and_(Destination.backoff_until.is_not(None), Destination.consecutive_failures > 0),
        )
        .values(backoff_until=None)
    )


async def _require(conn: AsyncConnection, destination_id: int) -> Any:
    row = (
        await conn.execute(
            select(Destination.types, Destination.categories, Destination.api_endpoints).where(
                Destination.id == destination_id
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"no destination with id {destination_id}")
    return row


def _delivery(row: Any, now: datetime) -> dict[str, Any]:
    item = dict(row)
    lease = item.pop("lease_until")
    item["in_flight"] = lease is not None and lease > now
    if item["status"] not in ("pending", "failed"):
        item["next_attempt_at"] = None
    return item
