"""Event retention (EVENT_RETENTION): events dated, and quarantined lines received, longer ago than the
retention are deleted, a chunk per short transaction, so that ingest waits for one chunk at most.

An event is kept while any outbox row for it is open (pending or failed): it has not been delivered.
Delivered rows and dead letters do not hold it; a dead letter retried after its event is gone is
settled as dead again ("the event is no longer stored", delivery.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter
from sqlalchemy import and_, delete, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from app import metrics
from app.context import Context
from app.cursor import Position
from app.db import RETENTION_LOCK, take_turns
from app.models import Destination, LogEvent, OutboxItem, QuarantinedLine
from app.outbox import SETTLED
from app.stopping import wait_or_stop

log = logging.getLogger(__name__)


def _held(destination_ids: list[int]) -> ColumnElement[bool]:
    """The event has a row that is not settled (pending or failed): one seek per destination in the
    (destination_id, log_id) index. The ids are given as values: PostgreSQL estimates a never
    analysed `destinations` at 80 rows, and would rather hash every outbox row, the delivered history
    included, for each chunk. "Not settled" rather than `status IN OPEN`: SQLite would seek by
    (destination_id, status) and read every open row of the destination for each event."""
    return exists().where(
        OutboxItem.destination_id.in_(destination_ids),
        OutboxItem.log_id == LogEvent.log_id,
        OutboxItem.status.not_in(SETTLED),
    )


@dataclass(frozen=True, slots=True)
class Pace:
    """How hard a purge goes (the README's performance section has the measures)."""

    chunk: int = 1000  # rows per transaction
    # Seconds between transactions. SQLite's busy handler sleeps up to 100 ms between tries: a
    # writer waiting for a chunk to commit (ingest's group commit) gets in before the next chunk.
    pause: float = 0.1


@dataclass(frozen=True, slots=True)
class Purged:
    events: int = 0
    quarantined_lines: int = 0


async def purge_events_chunk(
    conn: AsyncConnection, before: datetime, after: Position | None, limit: int
) -> tuple[int, Position | None]:
    """Delete the events dated before `before` among the next `limit` after `after` in (date, log_id)
    order, except those still waiting for a delivery. Returns the number deleted and the position
    reached, None when no event dated before `before` remains past it.

    Walking by position rather than taking the oldest each time passes the events that are kept
    (a destination down for days may hold many) once per run instead of once per chunk.
    """
    older = [LogEvent.date < before, *_past(after)]
    last = (
        await conn.execute(
            select(LogEvent.date, LogEvent.log_id)
            .where(*older)
            .order_by(LogEvent.date, LogEvent.log_id)
            .offset(limit - 1)
            .limit(1)
        )
    ).first()
    reached = Position(last.date, last.log_id) if last else None
    # One upper bound on date, so that the index range ends at the chunk's last event (SQLite takes
    # one of two, perhaps `date < before`, and would then read every remaining event).
    window = [*_past(after), _up_to(reached)] if reached else older
    destination_ids = list((await conn.execute(select(Destination.id))).scalars())
    result = await conn.execute(delete(LogEvent).where(*window, ~_held(destination_ids)))
    return result.rowcount or 0, reached


async def purge_quarantined_chunk(conn: AsyncConnection, before: datetime, limit: int) -> int:
    """Delete up to `limit` quarantined lines received before `before`."""
    old = select(QuarantinedLine.id).where(QuarantinedLine.received_at < before).limit(limit)
    result = await conn.execute(delete(QuarantinedLine).where(QuarantinedLine.id.in_(old.scalar_subquery())))
    return result.rowcount or 0


async def purge_expired(
    context: Context, now: datetime, stop: asyncio.Event | None = None, pace: Pace = Pace()
) -> Purged:
    """Delete what is older than EVENT_RETENTION at `now`, a chunk per transaction, until nothing
    is left or `stop` is set. Nothing when the setting is unset."""
    retention = context.settings.event_retention
    if retention is None:
        return Purged()
    started = time.perf_counter()
    before = now - retention
    stop = stop or asyncio.Event()
    purged = Purged(
        await _purge_events(context.engine, before, stop, pace),
        await _purge_quarantined(context.engine, before, stop, pace),
    )
    if purged.events or purged.quarantined_lines:
        log.info(
            "purged events past the retention",
            extra={
                "events": purged.events,
                "quarantined_lines": purged.quarantined_lines,
                "before": before.isoformat(),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
    return purged


async def _purge_events(engine: AsyncEngine, before: datetime, stop: asyncio.Event, pace: Pace) -> int:
    total = 0
    after: Position | None = None
    while not stop.is_set():
        async with engine.begin() as conn:
            await take_turns(conn, RETENTION_LOCK)  # with the chunks of other processes' purges
            purged, after = await purge_events_chunk(conn, before, after, pace.chunk)
        total += purged
        metrics.PURGED_EVENTS.inc(purged)
        if after is None:
            break
        await wait_or_stop(stop, pace.pause)
    return total


async def _purge_quarantined(engine: AsyncEngine, before: datetime, stop: asyncio.Event, pace: Pace) -> int:
    async def chunk(conn: AsyncConnection, limit: int) -> int:
        await take_turns(conn, RETENTION_LOCK)
        return await purge_quarantined_chunk(conn, before, limit)

    return await purge_in_chunks(engine, chunk, stop, pace, metrics.PURGED_QUARANTINED_LINES)


async def purge_in_chunks(
    engine: AsyncEngine,
    chunk: Callable[[AsyncConnection, int], Awaitable[int]],
    stop: asyncio.Event,
    pace: Pace,
    counter: Counter | None = None,
) -> int:
    """Run `chunk(conn, pace.chunk)` (it deletes up to that many rows) a short transaction at a time,
    with the pause between, until it deletes fewer or `stop` is set; returns the rows deleted."""
    total = 0
    while not stop.is_set():
        async with engine.begin() as conn:
            purged = await chunk(conn, pace.chunk)
        total += purged
        if counter is not None:
            counter.inc(purged)
        if purged < pace.chunk:
            break
        await wait_or_stop(stop, pace.pause)
    return total


def _past(position: Position | None) -> list[ColumnElement[bool]]:
    """Strictly after `position` in (date, log_id) order; `date >= d` bounds the index range."""
    if position is None:
        return []
    return [
        LogEvent.date >= position.date,
        or_(LogEvent.date > position.date, LogEvent.log_id > position.log_id),
    ]


def _up_to(position: Position) -> ColumnElement[bool]:
    """At or before `position` in (date, log_id) order."""
    return and_(
        LogEvent.date <= position.date,
        or_(LogEvent.date < position.date, LogEvent.log_id <= position.log_id),
    )
