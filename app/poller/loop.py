"""The poller loop: a pass on POLL_SCHEDULE, counted from the latest run any process recorded."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row

from app.context import Context
from app.poller import runs, state
from app.poller.poll import poll_once
from app.schedule import Schedule, parse_schedule
from app.stopping import Backoff, Wait, wait_or_stop

log = logging.getLogger(__name__)

BUSY_PAUSE = 5.0  # seconds before a loop looks again when another process's pass holds the lock


async def run_poller_loop(context: Context, stop: asyncio.Event, *, wait: Wait = wait_or_stop) -> None:
    """Run poll passes on POLL_SCHEDULE until stopped. The schedule runs from the latest run that any
    process recorded, so that `serve --workers N` and replicas poll once a period between them, not
    once each; a pass that ran out of time is followed at once, and one that a rate limit ended no
    earlier than the reset."""
    schedule = parse_schedule(context.settings.poll_schedule)
    backoff = Backoff(1.0)
    while not stop.is_set():
        try:
            pause = await _poll_when_due(context, schedule, stop, wait)
            backoff.succeeded()
        except Exception:  # e.g. the database is down while planning or taking the lock
            log.exception("poll pass crashed; trying again")
            pause = backoff.failed()
        if pause > 0:
            await wait(stop, pause)


async def _poll_when_due(context: Context, schedule: Schedule, stop: asyncio.Event, wait: Wait) -> float:
    """Run a pass if one is due; the seconds to wait before looking again."""
    async with context.engine.connect() as conn:
        last = await runs.last_run(conn)
        resume_at = (await state.load_state(conn)).resume_at
    now = datetime.now(UTC)
    due = max(next_pass_at(schedule, last, now), resume_at or now)
    if due > now:
        # Looked at again then: another process may run a pass meanwhile, and move the schedule.
        return (due - now).total_seconds()
    result = await poll_once(context, stop=stop, wait=wait, last_run_id=last.id if last else 0)
    return BUSY_PAUSE if result.skipped == "running" else 0.0


def next_pass_at(schedule: Schedule, last: Row[Any] | None, now: datetime) -> datetime:
    """When the pass after `last`, the latest run (whichever process ran it), is due."""
    if last is None:
        return now if schedule.interval is not None else schedule.next_after(now)
    started: datetime = last.started_at
    ended: datetime | None = last.ended_at
    if ended is not None and last.error is None and not last.caught_up:
        return now  # it ran out of time, or was stopped (a rate limit's resume_at is kept apart)
    if schedule.interval is not None:
        return (ended or started) + schedule.interval
    return schedule.next_after(started)
