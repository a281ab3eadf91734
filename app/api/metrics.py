"""GET /metrics: Prometheus text exposition (read token)."""

from __future__ import annotations

import functools

from fastapi import APIRouter, Response

from app import metrics
from app.api.deps import ContextDep, ReadAuth, StrictQuery
from app.api.error_docs import READ_ERRORS
from app.query_timeout import reading

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    dependencies=[ReadAuth, StrictQuery],
    response_class=Response,
    responses={
        200: {"description": "Prometheus' text format.", "content": {"text/plain": {}}},
        **READ_ERRORS,
    },
)
async def get_metrics(context: ContextDep) -> Response:
    """Counters of this service and the outbox, destination and poller state, for Prometheus; the
    counters alone, with logrelay_database_up 0, when the database cannot be read in time."""
    settings = context.settings
    time_limit = metrics.scrape_time_limit(settings.query_timeout)
    read = functools.partial(reading, context.engine, "metrics", time_limit)
    body = await metrics.render(read, bool(settings.auth0_domain), settings.poller_lag_limit)
    return Response(body, media_type=metrics.CONTENT_TYPE)
