"""What a stored row holds, that it is durable before the answer, and the health endpoints."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import READ_TOKEN, LiveServer, auth, bearer, database_gone, is_postgres
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


@pytest.mark.parametrize(
    ("date", "stored"),
    [
        ("2026-11-23T10:00:00+14:00", datetime(2026, 11, 22, 20, tzinfo=UTC)),
        ("2026-11-23T10:00:00-09:30", datetime(2026, 11, 23, 19, 30, tzinfo=UTC)),
        ("2026-11-23 10:00:00", datetime(2026, 11, 23, 10, tzinfo=UTC)),  # no zone: UTC
        ("2026-11-23", datetime(2026, 11, 23, tzinfo=UTC)),
        ("2026-11-23T10:00:00.123456789Z", datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("9999-12-31T23:59:59-01:00", None),  # past year 9999 once in UTC
        ("0001-01-01T00:00:00+01:00", None),  # before year 1 once in UTC
        ("2026-02-30T10:00:00Z", None),
        ("23/11/2026 10:00", None),
        ("", None),
        (1795428000000, None),  # epoch milliseconds are no ISO date
    ],
)
async def test_dates_in_odd_formats_and_zones(
    client: httpx.AsyncClient, engine: AsyncEngine, date: object, stored: datetime | None
) -> None:
    """A date is read as ISO 8601 and kept in UTC; one that is none, or that UTC cannot hold, gives
    way to received_at (None above)."""
    event = make_event(date=date)
    response = await client.post("/api/logs", content=make_stream_body([event]), headers=auth())
    assert response.json()["stored"] == 1, response.text
    row = await get_event(engine, event["log_id"])
    assert row.date == (stored or row.received_at)
    assert row.data["date"] == date  # the event itself is kept as sent
    read = await client.get(f"/api/events/{event['log_id']}", headers=bearer(READ_TOKEN))
    assert read.status_code == 200, read.text


async def test_numbers_are_stored_as_a_json_parser_reads_them(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Integers within 64 bits stay exact, a longer one becomes a float (as most JSON parsers read
    it), and both databases give every one back unchanged."""
    body = (
        b'{"log_id": "numbers", "data": {"type": "s", "details": {"u64": 18446744073709551615, '
        b'"i64": -9223372036854775808, "over": 18446744073709551616, "long": 123456789012345678901234567890, '
        b'"max": 1.7976931348623157e308, "min": 5e-324, "under": 1e-400, "neg": -0.0, "exp": 1E+2}}}'
    )
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.json()["stored"] == 1, response.text
    expected = {
        "u64": 2**64 - 1,
        "i64": -(2**63),
        "over": float(2**64),
        "long": 1.2345678901234568e29,
        "max": 1.7976931348623157e308,
        "min": 5e-324,
        "under": 0.0,
        "neg": 0.0,
        "exp": 100.0,
    }
    assert (await get_event(engine, "numbers")).data["details"] == expected
    read = await client.get("/api/events/numbers", headers=bearer(READ_TOKEN))
    assert read.status_code == 200, read.text
    # PostgreSQL writes 1.8446744073709552e+19 as 18446744073709552000: the same number to a parser
    # that reads numbers as doubles, as orjson and JavaScript do.
    assert orjson.loads(read.content)["data"]["details"] == expected


async def test_duplicate_keys_keep_the_last(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    body = b'{"log_id": "first", "log_id": "last", "data": {"type": "s", "type": "f", "ip": "a", "ip": "b"}}'
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.json() == {"received": 1, "stored": 1, "duplicates": 0, "rejected": 0}
    row = await get_event(engine, "last")
    assert (row.type, row.category, row.ip, row.data) == ("f", "failure", "b", {"type": "f", "ip": "b"})


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
