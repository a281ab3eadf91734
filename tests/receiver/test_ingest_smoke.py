from __future__ import annotations

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import LogEvent
from tests.conftest import auth
from tests.factories import make_event, make_stream_body


async def test_formats_store_each_event_once(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    events = [make_event() for _ in range(5)]
    answers = []
    for fmt in ("jsonl", "array", "object", "jsonl"):
        response = await client.post("/api/logs", content=make_stream_body(events, fmt), headers=auth())
        assert response.status_code == 200, response.text
        answers.append(response.json())
    assert answers[0] == {"received": 5, "stored": 5, "duplicates": 0, "rejected": 0}
    assert all(a == {"received": 5, "stored": 0, "duplicates": 5, "rejected": 0} for a in answers[1:])
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(LogEvent)) == 5
