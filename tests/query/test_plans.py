"""SQLite query plans: each kind of page reads the index meant for it, in order, without sorting the
whole match and without statistics (a live logrelay never runs ANALYZE). SQLite's planner does not
depend on the table's size without statistics, so a small test database shows the plans of a large
one. PostgreSQL plans from statistics; tests/bench/query_bench.py --explain shows those at scale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cursor import Position
from app.query import EventQuery, page_statement
from tests.conftest import is_postgres

pytestmark = pytest.mark.skipif(is_postgres(), reason="SQLite plans; PostgreSQL plans need statistics")

DAY = datetime(2026, 11, 20, tzinfo=UTC)
AFTER = Position(DAY, "90020261120")

PLANS: list[tuple[str, EventQuery, Position | None, str]] = [
    ("latest", EventQuery(), None, "ix_log_events_date"),
    ("deep", EventQuery(), AFTER, "ix_log_events_date (date<?)"),
    (
        "time range",
        EventQuery(since=DAY, until=DAY + timedelta(days=1)),
        None,
        "ix_log_events_date (date>? AND",
    ),
    ("user_id", EventQuery(user_id="auth0|1"), AFTER, "ix_log_events_user_id_date (user_id=? AND date<?)"),
    ("user_name", EventQuery(user_name="a@example.com"), None, "ix_log_events_user_name_date (user_name=?)"),
    ("client_id", EventQuery(client_id="c"), None, "ix_log_events_client_id_date (client_id=?)"),
    ("connection", EventQuery(connection="c"), None, "ix_log_events_connection_date (connection=?)"),
    ("ip", EventQuery(ip="10.0.0.1"), None, "ix_log_events_ip_date (ip=?)"),
    ("type", EventQuery(types=("fp",)), AFTER, "ix_log_events_type_date (type=? AND date<?)"),
    (
        "type + range",
        EventQuery(types=("s",), since=DAY),
        None,
        "ix_log_events_type_date (type=? AND date>?)",
    ),
    ("failure", EventQuery(category="failure"), AFTER, "ix_log_events_failure_date (date<?)"),
    ("warning", EventQuery(category="warning"), None, "ix_log_events_warning_date"),
    ("other", EventQuery(category="other"), None, "ix_log_events_date"),
    # Combined: the narrowest filter leads, whatever else is asked.
    (
        "type + user",
        EventQuery(types=("s",), user_id="auth0|1"),
        None,
        "ix_log_events_user_id_date (user_id=?)",
    ),
    ("failure + user", EventQuery(category="failure", user_id="u"), None, "ix_log_events_user_id_date"),
    ("failure + ip", EventQuery(category="failure", ip="10.0.0.1"), None, "ix_log_events_ip_date (ip=?)"),
    ("type + client", EventQuery(types=("s",), client_id="c"), None, "ix_log_events_client_id_date"),
    ("failure + type", EventQuery(category="failure", types=("fp",)), None, "ix_log_events_type_date"),
    ("types", EventQuery(types=("s", "fp", "w")), AFTER, "ix_log_events_type_date (type=? AND date<?)"),
]


@pytest.mark.parametrize(("query", "after", "index"), [p[1:] for p in PLANS], ids=[p[0] for p in PLANS])
async def test_page_reads_its_index_in_order(
    engine: AsyncEngine, query: EventQuery, after: Position | None, index: str
) -> None:
    sql = str(
        page_statement("sqlite", query, 101, after).compile(
            dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
        )
    )
    async with engine.connect() as conn:
        assert not await conn.scalar(
            text("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'sqlite_stat%'")
        ), "the test database must have no planner statistics"
        steps = [row[3] for row in await conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))]
    reads = [s for s in steps if "log_events" in s]
    merged = len(query.types) > 1
    if merged:
        # Several codes: the merged page's rows are then read whole, by key, and only they.
        assert reads.pop() == "SEARCH log_events USING INDEX sqlite_autoindex_log_events_1 (log_id=?)"
    assert reads
    # Each read of the table goes through the expected index (one per type when several are asked).
    assert all(f"USING INDEX {index}" in s for s in reads), steps
    # Only ties within one date are sorted ("RIGHT PART"); the few rows of each merged branch and of
    # the merged page aside, the whole match is never sorted.
    full_sorts = [s for s in steps if s == "USE TEMP B-TREE FOR ORDER BY"]
    assert len(full_sorts) == (len(query.types) + 1 if merged else 0), steps
