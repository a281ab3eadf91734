"""The run history (poller_runs): a row a pass, opened when it starts and closed by record_pass.
Functions take a connection and never commit, except record_pass."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Row, delete, false, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.context import Context
from app.models import PollerRun
from app.poller.result import PassResult
from app.poller.state import set_resume_at

log = logging.getLogger(__name__)

# Run history: the last day always stays (the daily report reads it); older runs go once they are
# older than LOG_RETENTION_DAYS or beyond the newest KEEP_RUNS.
KEEP_RUNS = 1000

# What a run the next pass found still open says: its process ended without closing it.
ABANDONED = (
    "interrupted: the poll process stopped before the pass finished (killed, or it crashed); what it "
    "stored is kept, and the next pass went on from the checkpoint"
)


async def start_run(conn: AsyncConnection, started_at: datetime, checkpoint: str | None) -> int:
    result = await conn.execute(
        insert(PollerRun)
        .values(started_at=started_at, start_checkpoint=checkpoint, logs_read=0, stored=0, caught_up=False)
        .returning(PollerRun.id)
    )
    return int(result.scalar_one())


async def close_abandoned_runs(conn: AsyncConnection, now: datetime) -> int:
    """Close the runs still open: only the pass lock's holder calls this, before it opens its own run,
    so every open run belongs to a pass that can no longer close it. Returns how many it closed."""
    result = await conn.execute(
        update(PollerRun).where(PollerRun.ended_at.is_(None)).values(ended_at=now, error=ABANDONED)
    )
    return int(result.rowcount)


async def finish_run(conn: AsyncConnection, run_id: int, **values: object) -> None:
    # Also over ABANDONED: a pass that outlived its lock (a frozen process) knows best how it ended.
    await conn.execute(update(PollerRun).where(PollerRun.id == run_id).values(**values))


async def prune_runs(conn: AsyncConnection, now: datetime, retention: timedelta) -> int:
    """Delete the runs past the history's bound (see KEEP_RUNS); returns how many went."""
    oldest_kept = await conn.scalar(
        select(PollerRun.id).order_by(PollerRun.id.desc()).offset(KEEP_RUNS - 1).limit(1)
    )
    beyond_newest = PollerRun.id < oldest_kept if oldest_kept is not None else false()
    day_ago = now - timedelta(days=1)
    result = await conn.execute(
        delete(PollerRun).where(
            PollerRun.started_at < day_ago,
            or_(PollerRun.started_at < now - retention, beyond_newest),
        )
    )
    return int(result.rowcount)


async def last_run(conn: AsyncConnection) -> Row[Any] | None:
    runs = PollerRun.__table__
    return (await conn.execute(select(runs).order_by(runs.c.id.desc()).limit(1))).first()


async def last_run_id(conn: AsyncConnection) -> int:
    """The id of the latest run, 0 when there is none."""
    return int(await conn.scalar(select(func.max(PollerRun.id))) or 0)


async def runs_since(conn: AsyncConnection, since: datetime) -> list[Row[Any]]:
    runs = PollerRun.__table__
    return list(await conn.execute(select(runs).where(runs.c.started_at >= since).order_by(runs.c.id)))


async def record_pass(context: Context, result: PassResult) -> None:
    """Close the run row and prune the run history, in one transaction."""
    values = {k: v for k, v in result.as_dict().items() if k in _RUN_COLUMNS}
    values["end_checkpoint"] = result.checkpoint
    retention = timedelta(days=context.settings.log_retention_days)
    try:
        async with context.engine.begin() as conn:
            assert result.run_id is not None
            assert result.ended_at is not None
            await finish_run(conn, result.run_id, **values)
            await set_resume_at(conn, result.resume_at)
            await prune_runs(conn, result.ended_at, retention)
    except Exception:
        log.exception("could not record the poll run")
    level = logging.ERROR if result.error else logging.INFO
    summary = orjson.loads(orjson.dumps(result.as_dict()))
    log.log(level, "poll pass failed" if result.error else "poll pass finished", extra={"run": summary})


_RUN_COLUMNS = {"ended_at", "logs_read", "stored", "error", "warning", "caught_up"}
