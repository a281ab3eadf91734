"""The transactional outbox: rows queued for destinations in the transaction that stores events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.filters import EventFilter
from app.models import Destination, OutboxItem


async def enqueue(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> int:
    """Queue each newly stored event for every enabled destination whose filter matches it.

    Runs inside the storing transaction, so an event is never stored without being queued.
    """
    targets = await conn.execute(
        select(Destination.id, Destination.types, Destination.categories, Destination.api_endpoints).where(
            Destination.enabled.is_(True)
        )
    )
    filters = [(d.id, EventFilter.of(d.types, d.categories, d.api_endpoints)) for d in targets]
    if not filters:
        return 0
    now = datetime.now(UTC)
    items = []
    for row in rows:
        data: dict[str, Any] | None = None
        for destination_id, event_filter in filters:
            if event_filter.api_endpoints and data is None:
                data = orjson.loads(row["data"])
            if event_filter.matches(row["type"], row["category"], data or {}):
                items.append(
                    {
                        "destination_id": destination_id,
                        "log_id": row["log_id"],
                        "status": "pending",
                        "attempts": 0,
                        "created_at": now,
                        "next_attempt_at": now,
                    }
                )
    if items:
        await conn.execute(insert(OutboxItem), items)
    return len(items)
