"""Every outbox query of a scrape (a destination's health) reads an index range bound by status, so
that it touches the open rows and dead letters and never the delivered history, which
DELIVERY_KEEP_DELIVERED keeps by the million on a busy tenant.

SQLite plans without statistics (a live logrelay never runs ANALYZE), so a small database shows the
plan of a large one. PostgreSQL plans from the statistics autovacuum keeps: the test gives it some
delivered history and runs ANALYZE. tests/bench/scrape_bench.py --explain shows both at scale.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.deliveries import destination_health
from app.models import OutboxItem
from app.outbox import new_item, queue
from tests.conftest import LiveServer, is_postgres, statements_naming
from tests.relay.conftest import add_destination

HISTORY = 5000  # delivered rows: enough for PostgreSQL's statistics to tell them from the backlog


async def test_a_scrape_reads_no_delivered_rows(
    relay: LiveServer, api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    destination = await add_destination(api, "http://127.0.0.1:9/hook")
    await add_history(engine, destination["id"])
    with statements_naming(engine, "outbox_items") as statements:
        async with engine.connect() as conn:
            await destination_health(conn, destination["id"])
    assert len(statements) == 2  # the counts by status; the oldest pending and failed rows
    async with engine.connect() as conn:
        for sql, parameters in statements:
            conditions = await index_conditions(conn, sql, parameters)
            assert conditions, f"no index read: {sql}"
            # Bound by status, the destination too or not: what is read is open rows and dead letters.
            assert all("status" in c for c in conditions), (sql, conditions)


async def add_history(engine: AsyncEngine, destination_id: int) -> None:
    """HISTORY delivered rows and one pending, as a busy destination holds them (in proportion)."""
    now = datetime.now(UTC)
    day_old = {"created_at": now - timedelta(days=1), "next_attempt_at": now - timedelta(days=1)}
    delivered = [
        {**new_item(destination_id, f"old{n}"), **day_old, "status": "delivered", "delivered_at": now}
        for n in range(HISTORY)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(OutboxItem), delivered)
        await conn.execute(queue(conn.dialect.name), [new_item(destination_id, "new")])
        if is_postgres():
            await conn.execute(text("ANALYZE outbox_items"))


async def index_conditions(conn: AsyncConnection, sql: str, parameters: Any) -> list[str]:
    """What bounds each read of outbox_items in the statement's plan ("" for a read of the table
    through no index)."""
    if not is_postgres():
        assert not await conn.scalar(
            text("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'sqlite_stat%'")
        ), "the test database must have no planner statistics"
        steps = [row[3] for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters)]
        # "SEARCH outbox_items USING COVERING INDEX <name> (destination_id=? AND status=?)"
        return [s.partition(" INDEX ")[2].partition(" ")[2] for s in steps if "outbox_items" in s]
    plan = await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", parameters)
    found = plan.scalar_one()
    nodes = _nodes((json.loads(found) if isinstance(found, str) else found)[0]["Plan"])
    return [
        node.get("Index Cond", "")
        for node in nodes
        if node.get("Relation Name") == "outbox_items" or "outbox_items" in node.get("Index Name", "")
        if node["Node Type"] != "Bitmap Heap Scan"  # its Bitmap Index Scan below holds the condition
    ]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)
