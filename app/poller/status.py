"""The poller's status as GET /api/poller and /metrics show it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.auth0.management import date_of_log_id
from app.poller.lock import is_pass_running
from app.poller.runs import last_run
from app.poller.state import load_state


async def describe(conn: AsyncConnection, lag_limit: timedelta) -> dict[str, Any]:
    """The checkpoint, the last run and the lag, as GET /api/poller shows them."""
    state = await load_state(conn)
    run = await last_run(conn)
    checkpoint_at = date_of_log_id(state.checkpoint)
    now = datetime.now(UTC)
    if run is not None and run.caught_up and run.ended_at is not None:
        # Nothing was newer when that run ended, but a poller that has stopped must not look current.
        lag: timedelta | None = now - run.ended_at
    else:
        lag = now - checkpoint_at if checkpoint_at else None
    return {
        "running": await is_pass_running(conn),
        "checkpoint": state.checkpoint,
        "checkpoint_date": checkpoint_at,
        "start_from": state.start_from,
        "resume_at": state.resume_at if state.resume_at and state.resume_at > now else None,
        "last_run": None
        if run is None
        else {
            "id": run.id,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "start_checkpoint": run.start_checkpoint,
            "end_checkpoint": run.end_checkpoint,
            "logs_read": run.logs_read,
            "stored": run.stored,
            "caught_up": run.caught_up,
            "error": run.error,
            "warning": run.warning,
        },
        "lag_seconds": None if lag is None else int(lag.total_seconds()),
        "lag_warning": lag is not None and lag > lag_limit,
    }
