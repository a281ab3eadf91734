"""What a stored row holds, that it is durable before the answer, and the health endpoints."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, auth, database_gone, is_postgres
from tests.factories import make_event, make_stream_body
from tests.receiver.support import fixture_bytes, fixture_items, get_event, jsonl, stored_ids


async def test_row_columns_from_a_real_event(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    item = next(i for i in fixture_items("stream_events.jsonl") if i["data"]["type"] == "f")
    data = item["data"]
    before = datetime.now(UTC)
    response = await client.post("/api/logs", content=jsonl([item]), headers=auth())
    after = datetime.now(UTC)
    assert response.status_code == 200, response.text

    row = await get_event(engine, item["log_id"])
    assert row.date == datetime.fromisoformat(data["date"])
    assert row.date.tzinfo is not None
    assert row.type == "f"
    assert row.category == "failure"
    for column in ("user_id", "user_name", "client_id", "client_name", "connection", "ip", "description"):
        assert getattr(row, column) == data.get(column), column
    assert row.data == data
    assert row.source == "stream"
    assert row.id_generated is False
    assert before <= row.received_at <= after


async def test_every_fixture_row_has_its_columns(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    for name in ("stream_events.jsonl", "mgmt_api_logs.json"):
        response = await client.post("/api/logs", content=fixture_bytes(name), headers=auth())
        assert response.status_code == 200
        for item in fixture_items(name):
            data = item.get("data", item)
            row = await get_event(engine, item["log_id"])
            assert row.type == data["type"]
            assert row.date == datetime.fromisoformat(data["date"])
            assert row.user_id == data.get("user_id")
            assert row.ip == data.get("ip")
            assert row.client_name == data.get("client_name")


@pytest.mark.parametrize(
    ("type_", "category"),
    [
        ("f", "failure"),
        ("fp", "failure"),
        ("pwd_leak", "failure"),
        ("limit_wc", "failure"),
        ("api_limit", "failure"),
        ("actions_execution_failed", "failure"),
        ("w", "warning"),
        ("api_limit_warning", "warning"),
        ("depnote", "warning"),
        ("s", "other"),
        ("sapi", "other"),
        ("flows_execution_completed", "other"),
        ("a_code_auth0_added_next_year", "other"),
        (None, "other"),
    ],
)
async def test_category_from_the_catalogue(
    client: httpx.AsyncClient, engine: AsyncEngine, type_: str | None, category: str
) -> None:
    event = make_event(type=type_)
    response = await client.post("/api/logs", content=make_stream_body([event]), headers=auth())
    assert response.status_code == 200, response.text
    row = await get_event(engine, event["log_id"])
    assert (row.type, row.category) == (type_, category)


async def test_event_without_date_takes_received_at(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    event = make_event()
    del event["date"]
    await client.post("/api/logs", content=make_stream_body([event]), headers=auth())
    row = await get_event(engine, event["log_id"])
    assert row.date == row.received_at


async def test_odd_field_types_do_not_break_the_columns(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    event = make_event(
        date="not a date", type=["f"], user_id=12345, user_name={"a": 1}, ip=None, description=True
    )
    response = await client.post("/api/logs", content=make_stream_body([event]), headers=auth())
    assert response.status_code == 200, response.text
    row = await get_event(engine, event["log_id"])
    assert row.data == event
    assert row.type is None
    assert row.user_id == "12345"
    assert row.user_name is None
    assert row.date == row.received_at


async def test_rows_are_committed_before_the_answer(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """After each 200, a separate connection already sees every event of that request."""
    seen: set[str] = set()
    for fmt in ("jsonl", "array", "object"):
        events = [make_event() for _ in range(20)]
        response = await client.post("/api/logs", content=make_stream_body(events, fmt), headers=auth())
        assert response.status_code == 200
        seen |= {e["log_id"] for e in events}
        assert await stored_ids(engine) == seen


async def test_sqlite_is_in_wal_mode(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    if is_postgres():
        pytest.skip("SQLite only")
    await client.post("/api/logs", content=make_stream_body([make_event()]), headers=auth())
    async with engine.connect() as conn:
        assert (await conn.scalar(text("PRAGMA journal_mode"))) == "wal"


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_readyz_when_the_database_is_gone(client: httpx.AsyncClient, live: LiveServer) -> None:
    """With the engine closed and pointed nowhere, /readyz says 503 while /healthz stays 200."""
    async with database_gone(live):
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"] == "unavailable"
        assert (await client.get("/healthz")).status_code == 200
