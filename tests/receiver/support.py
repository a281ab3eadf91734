"""Helpers for the receiver tests: the fixture bodies as items, and reads from the store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sqlalchemy import Row, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import LogEvent, QuarantinedLine
from tests.conftest import FIXTURES, is_postgres

# The real samples that are receiver bodies, with how many events each holds.
BODY_FIXTURES = {
    "stream_events.jsonl": 16,
    "stream_body_json_array.json": 3,
    "stream_body_json_object_UNCONFIRMED.json": 1,
    "stream_docs_test_payload.json": 1,
    "mgmt_api_logs.json": 8,
}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_items(name: str) -> list[dict[str, Any]]:
    """The events a fixture body carries, as the objects Auth0 (or the old extensions) sent."""
    raw = fixture_bytes(name)
    if name.endswith(".jsonl"):
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    document = orjson.loads(raw)
    items: list[dict[str, Any]] = document["logs"] if isinstance(document, dict) else document
    return items


def expected_id(item: dict[str, Any]) -> str:
    """The id the issue prescribes, worked out here independently of app.auth0.stream.event."""
    inner = item["data"] if isinstance(item.get("data"), dict) else {}
    return str(item.get("log_id") or inner.get("log_id") or inner.get("_id") or item.get("_id"))


def expected_data(item: dict[str, Any]) -> dict[str, Any]:
    """The log object itself: the envelope's `data`, or the bare log."""
    data = item.get("data")
    if isinstance(data, dict) and "type" not in item:
        return data
    return item


def jsonl(items: list[dict[str, Any]], sep: bytes = b"\n") -> bytes:
    return sep.join(orjson.dumps(i) for i in items) + sep


async def count_events(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(LogEvent)) or 0)


async def stored_ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.scalars(select(LogEvent.log_id))).all())


async def get_event(engine: AsyncEngine, log_id: str) -> Row[Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(LogEvent).where(LogEvent.log_id == log_id))).one_or_none()
    assert row is not None, f"{log_id} is not stored"
    return row


async def all_events(engine: AsyncEngine) -> list[Row[Any]]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(LogEvent).order_by(LogEvent.log_id))).all())


async def quarantined(engine: AsyncEngine) -> list[Row[Any]]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(QuarantinedLine).order_by(QuarantinedLine.id))).all())


@contextlib.asynccontextmanager
async def refusing(engine: AsyncEngine, log_id: str) -> AsyncIterator[None]:
    """A real database trigger that refuses to store one log id, for the block."""
    if is_postgres():
        create = [
            "CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.log_id = '{log_id}' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$ "
            "LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON log_events "
            "FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        ]
        drop = [
            "DROP TRIGGER IF EXISTS refuse_poison ON log_events",
            "DROP FUNCTION IF EXISTS refuse_poison()",
        ]
    else:
        create = [
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON log_events "
            f"WHEN NEW.log_id = '{log_id}' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        ]
        drop = ["DROP TRIGGER IF EXISTS refuse_poison"]
    async with engine.begin() as conn:
        for statement in create:
            await conn.execute(text(statement))
    try:
        yield
    finally:
        async with engine.begin() as conn:
            for statement in drop:
                await conn.execute(text(statement))
