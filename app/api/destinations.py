"""Routes for the destinations API: manage relay targets, see their health, replay and retry.

Every route needs the admin token. Secrets are accepted and never returned.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app import deliveries, destinations
from app.api.deps import (
    AdminAuth,
    ContextDep,
    DestinationId,
    IsoDateTime,
    StrictQuery,
    limited_read,
    utc_range,
)
from app.api.error_docs import ADMIN_ERRORS, NO_DESTINATION, READ_TIMED_OUT, TOO_LARGE, Responses, error
from app.destinations import DestinationCreate, DestinationPatch

router = APIRouter(
    prefix="/api/destinations",
    tags=["destinations"],
    dependencies=[AdminAuth, StrictQuery],
    responses=ADMIN_ERRORS,
)
NAME_TAKEN: Responses = {409: error("A destination with this name exists.")}


@router.get("", responses=READ_TIMED_OUT)
async def list_destinations(context: ContextDep) -> list[dict[str, Any]]:
    """List destinations (without their secrets)."""
    async with limited_read(context, "admin") as conn:
        return await destinations.list_destinations(conn)


@router.post("", status_code=201, responses={**NAME_TAKEN, **TOO_LARGE})
async def create_destination(fields: DestinationCreate, context: ContextDep) -> dict[str, Any]:
    """Create a destination; events stored from now on are queued for it."""
    async with context.engine.begin() as conn:
        destination_id = await destinations.create_destination(conn, fields)
        return await destinations.get_destination(conn, destination_id)


@router.get("/{destination_id}", responses={**NO_DESTINATION, **READ_TIMED_OUT})
async def get_destination(destination_id: DestinationId, context: ContextDep) -> dict[str, Any]:
    """A destination and its health: last success and failure, backlog, oldest pending age, and its
    pending, failed and dead rows (delivered rows are not counted: list them with /api/deliveries)."""
    async with limited_read(context, "admin") as conn:
        destination = await destinations.get_destination(conn, destination_id)
        destination["health"] = await deliveries.destination_health(conn, destination_id)
        return destination


@router.patch("/{destination_id}", responses={**NO_DESTINATION, **NAME_TAKEN, **TOO_LARGE})
async def update_destination(
    destination_id: DestinationId, fields: DestinationPatch, context: ContextDep
) -> dict[str, Any]:
    """Change some fields of a destination (a secret set to null is removed)."""
    async with context.engine.begin() as conn:
        await destinations.update_destination(
            conn, destination_id, fields, context.settings.signing_secret_grace
        )
        return await destinations.get_destination(conn, destination_id)


@router.delete("/{destination_id}", status_code=204, responses=NO_DESTINATION)
async def delete_destination(destination_id: DestinationId, context: ContextDep) -> Response:
    """Delete a destination and its queued and past deliveries."""
    async with context.engine.begin() as conn:
        await destinations.delete_destination(conn, destination_id)
    return Response(status_code=204)


@router.post("/{destination_id}/replay", responses=NO_DESTINATION)
async def replay(
    destination_id: DestinationId,
    context: ContextDep,
    since: Annotated[IsoDateTime | None, Query(description="Events dated at or after this time")] = None,
    until: Annotated[IsoDateTime | None, Query(description="Events dated before this time")] = None,
    type: Annotated[str | None, Query(description="Codes or categories, comma-separated")] = None,
) -> dict[str, int]:
    """Queue stored events for this destination again (those already waiting are skipped)."""
    since, until = utc_range(since, until)
    types = [t.strip() for t in (type or "").split(",") if t.strip()]
    queued = await deliveries.replay(context.engine, destination_id, since=since, until=until, types=types)
    return {"queued": queued}


@router.post("/{destination_id}/retry-dead", responses=NO_DESTINATION)
async def retry_dead(destination_id: DestinationId, context: ContextDep) -> dict[str, int]:
    """Queue every dead letter of this destination again, with fresh attempts."""
    async with context.engine.begin() as conn:
        return {"queued": await deliveries.retry_all(conn, destination_id, "dead")}


@router.post("/{destination_id}/retry-failed", responses=NO_DESTINATION)
async def retry_failed(destination_id: DestinationId, context: ContextDep) -> dict[str, int]:
    """Send every failed row of this destination again now, with fresh attempts."""
    async with context.engine.begin() as conn:
        return {"queued": await deliveries.retry_all(conn, destination_id, "failed")}
