"""poll_once: whether a pass may run now (the lock, a rate limit's resume_at, a pass another process
ran), the pass itself, and its Slack report."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from app import reports
from app.context import Context
from app.poller import lock, runs, state
from app.poller.passes import Pass
from app.poller.result import PassResult
from app.stopping import Wait, wait_or_stop

log = logging.getLogger(__name__)

LEASE_MARGIN = 60.0  # a SQLite lease outlives the pass budget by this much


async def poll_once(
    context: Context,
    *,
    stop: asyncio.Event | None = None,
    wait: Wait = wait_or_stop,
    last_run_id: int | None = None,
) -> PassResult:
    """One pass: read and store pages until Auth0 has nothing newer or POLL_MAX_RUN_SECONDS is spent.

    Returns `ran=False` at once, `skipped` saying why, when another pass (this or another replica)
    holds the lock, when a pass that a rate limit ended said to start no earlier than a time still
    ahead (`resume_at`), or when the latest run is no longer `last_run_id` (0: none), the one a loop
    planned this pass from: another process has run it. `stop` ends the pass cleanly at the next
    page or pause.
    """
    settings = context.settings
    lease_seconds = settings.poll_max_run_seconds + LEASE_MARGIN
    async with lock.hold_pass_lock(context.engine, lease_seconds) as lease:
        if lease is None:
            log.info("poll pass skipped: another pass is running")
            return PassResult(ran=False, skipped="running")
        async with context.engine.connect() as conn:
            resume_at = (await state.load_state(conn)).resume_at
            latest = await runs.last_run_id(conn) if last_run_id is not None else None
        if resume_at is not None and resume_at > datetime.now(UTC):
            log.info("poll pass skipped: the Auth0 rate limit holds", extra={"until": resume_at.isoformat()})
            return PassResult(ran=False, resume_at=resume_at, skipped="rate_limited")
        if latest != last_run_id:
            log.info("poll pass skipped: another process ran it")
            return PassResult(ran=False, skipped="ran_elsewhere")
        result = await Pass(context, lease, stop or asyncio.Event(), wait).run()
        assert result.ended_at is not None
        run = reports.RunReport(
            result.started_at,
            result.ended_at,
            result.logs_read,
            result.checkpoint,
            result.error,
            "; ".join(result.warnings) or None,
        )
        # Still under the lock, so that replicas never send the same report twice.
        await reports.report_pass(context, run, loud=result.alert)
        return result
