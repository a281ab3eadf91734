"""GET /api/poller (checkpoint, last run, lag) and POST /api/poller/run (a pass now)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from app.api.deps import AdminAuth, ContextDep, ReadAuth, StrictQuery, limited_read
from app.api.error_docs import ADMIN_ERRORS, READ_ERRORS, READ_TIMED_OUT, error
from app.errors import Conflict, TooManyRequests
from app.poller.poll import poll_once
from app.poller.status import describe

router = APIRouter(tags=["poller"])


# The token first, then the query: an anonymous request learns nothing of the parameters.
@router.get("/api/poller", dependencies=[ReadAuth, StrictQuery], responses={**READ_ERRORS, **READ_TIMED_OUT})
async def get_poller(context: ContextDep) -> dict[str, Any]:
    """The poller's checkpoint, its last run and how far it trails real time."""
    settings = context.settings
    async with limited_read(context, "admin") as conn:
        status = await describe(conn, settings.poller_lag_limit)
    return {"enabled": bool(settings.auth0_domain), "schedule": settings.poll_schedule, **status}


@router.post(
    "/api/poller/run",
    dependencies=[AdminAuth, StrictQuery],
    responses={
        **ADMIN_ERRORS,
        409: error("The poller is not configured (AUTH0_DOMAIN), or another pass is running."),
        429: error("A pass that the Auth0 rate limit ended said when the next may start; Retry-After."),
    },
)
async def run_poller(context: ContextDep) -> dict[str, Any]:
    """Run one poll pass now and answer with its result (bounded by POLL_MAX_RUN_SECONDS)."""
    if not context.settings.auth0_domain:
        raise Conflict(
            "the poller is not configured: set AUTH0_DOMAIN, AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET"
        )
    # The process's shutdown ends it cleanly, as it does the loops' passes.
    result = await poll_once(context, stop=context.stopping)
    if result.skipped == "rate_limited" and result.resume_at is not None:
        seconds = max(1, math.ceil((result.resume_at - datetime.now(UTC)).total_seconds()))
        until = result.resume_at.isoformat(timespec="seconds")
        raise TooManyRequests(
            f"the Auth0 Management API rate limit ended the last pass; the next may start at {until}",
            headers={"Retry-After": str(seconds)},
        )
    if not result.ran:
        raise Conflict("another poll pass is running; try again when it ends")
    return result.as_dict()
