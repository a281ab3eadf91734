"""Routes for the deliveries API: what the outbox holds, and retrying rows. Admin token only."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from app import deliveries
from app.api.deps import (
    MAX_DELIVERY_ID,
    MAX_DESTINATION_ID,
    AdminAuth,
    ContextDep,
    DeliveryId,
    StrictQuery,
    limited_read,
)
from app.api.error_docs import ADMIN_ERRORS, READ_TIMED_OUT, error

router = APIRouter(
    prefix="/api/deliveries",
    tags=["deliveries"],
    dependencies=[AdminAuth, StrictQuery],
    responses=ADMIN_ERRORS,
)


@router.get("", responses=READ_TIMED_OUT)
async def list_deliveries(
    context: ContextDep,
    destination: Annotated[
        int | None, Query(ge=1, le=MAX_DESTINATION_ID, description="A destination id")
    ] = None,
    status: Literal["pending", "failed", "delivered", "dead"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_DELIVERY_ID, description="The `next` value of the previous page")
    ] = None,
) -> dict[str, Any]:
    """Deliveries newest first: attempts, last status code, last error and next attempt time."""
    async with limited_read(context, "admin") as conn:
        return await deliveries.list_deliveries(
            conn, destination_id=destination, status=status, limit=limit, before=before
        )


@router.post(
    "/{delivery_id}/retry",
    responses={404: error("No delivery with this id."), 409: error("The delivery is being sent right now.")},
)
async def retry_delivery(delivery_id: DeliveryId, context: ContextDep) -> dict[str, Any]:
    """Send this row again as soon as possible, with fresh attempts."""
    async with context.engine.begin() as conn:
        return await deliveries.retry_delivery(conn, delivery_id)
