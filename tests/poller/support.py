"""What the poller tests read back from the store."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import LogEvent, PollerState


async def stored_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list(await conn.scalars(select(LogEvent.log_id).order_by(LogEvent.log_id)))


async def checkpoint(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(select(PollerState.checkpoint))


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["_id"] for item in items]
