"""Scrape cost benchmark: GET /metrics and a destination's health against a big outbox (not collected
by pytest).

Loads N delivered outbox rows (the history DELIVERY_KEEP_DELIVERED keeps, 7 days by default) and an
open backlog (pending and failed) and dead letters, spread over a few destinations, with bulk SQL (the
indexes built after the load, as a restore would). Then starts `logrelay serve` (workers off, so the
rows stay as loaded) and times GET /metrics and GET /api/destinations/{id} through real HTTP, printing
p50/p95/max. A loaded database is reused when it holds the same rows (or load again with --reload);
pending migrations are applied first, and timed.

    .venv/bin/python tests/bench/scrape_bench.py --delivered 1000000 --database-url sqlite:////tmp/scrape.db
    .venv/bin/python tests/bench/scrape_bench.py --delivered 1000000 \\
        --database-url postgresql://postgres@127.0.0.1:5432/dev_scrape --explain

--explain also prints the plan of each outbox query a scrape runs (captured while
`deliveries.destination_health` runs them) and its time: SQLite's EXPLAIN QUERY PLAN without planner
statistics (a live logrelay never runs ANALYZE), PostgreSQL's EXPLAIN ANALYZE after VACUUM ANALYZE.
--reload wipes every logrelay table of the database first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import Base, make_engine  # noqa: E402
from app.models import OutboxItem  # noqa: E402
from tests.bench.query_bench import (  # noqa: E402
    Row,
    _pg_fetch,
    free_port,
    load_table,
    percentile,
    pg_dsn,
    sqlite_path,
    start_server,
)
from tests.conftest import statements_naming  # noqa: E402

ADMIN = "bench-admin-token"  # the admin token start_server gives logrelay
HISTORY = timedelta(days=7)  # DELIVERY_KEEP_DELIVERED's default: what a busy tenant keeps
COLUMNS = [c.name for c in OutboxItem.__table__.columns if c.name != "id"]
CHUNK = 50_000


# --- loading ---------------------------------------------------------------------------------------


def outbox_rows(
    destinations: list[int], delivered: int, open_: int, dead: int, failed_share: float = 0.5
) -> Iterator[Row]:
    """Delivered rows over the last HISTORY, destinations interleaved as ingest queues them; then
    the open backlog of the last hour (failed_share of it failed, the rest pending) and the dead
    letters."""
    now = datetime.now(UTC)
    start = now - HISTORY - timedelta(hours=1)
    ids = itertools.count()
    for i in range(delivered):
        created = start + HISTORY * i / delivered
        yield _row(destinations[i % len(destinations)], next(ids), "delivered", created, attempts=1, code=200)
    for i in range(open_):
        owner, created = destinations[i // 2 % len(destinations)], now - timedelta(hours=1) * (1 - i / open_)
        if int((i + 1) * failed_share) > int(i * failed_share):
            later = now + timedelta(minutes=5)
            yield _row(owner, next(ids), "failed", created, attempts=3, code=503, error="HTTP 503", due=later)
        else:
            yield _row(owner, next(ids), "pending", created)
    for i in range(dead):
        created = start + HISTORY * i / dead
        yield _row(destinations[i % len(destinations)], next(ids), "dead", created, attempts=1, code=400)


def _row(
    destination_id: int,
    n: int,
    status: str,
    created: datetime,
    *,
    attempts: int = 0,
    code: int | None = None,
    error: str | None = None,
    due: datetime | None = None,
) -> Row:
    tried = created + timedelta(seconds=1) if attempts else None
    values = {
        "destination_id": destination_id,
        "log_id": f"900{n:032d}",
        "status": status,
        "attempts": attempts,
        "created_at": created,
        "next_attempt_at": due or created,
        "lease_until": None,
        "lease_calls": None,
        "last_attempt_at": tried,
        "delivered_at": tried if status == "delivered" else None,
        "last_status_code": code,
        "last_error": error or (f"HTTP {code}" if status == "dead" else None),
        "batch_id": None,
    }
    return tuple(values[c] for c in COLUMNS)


def batched(rows: Iterator[Row]) -> Iterator[list[Row]]:
    while batch := list(itertools.islice(rows, CHUNK)):
        yield batch


def wipe(settings: Settings) -> None:
    """Drop every logrelay table, whichever revision made them (an older or newer build's)."""
    if settings.is_sqlite:
        for suffix in ("", "-wal", "-shm"):
            Path(sqlite_path(settings) + suffix).unlink(missing_ok=True)
        return
    names = [t.name for t in Base.metadata.sorted_tables] + ["alembic_version"]
    asyncio.run(_pg_execute(settings, f"DROP TABLE IF EXISTS {', '.join(names)} CASCADE"))


@contextlib.asynccontextmanager
async def app_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """logrelay's own engine, for what is done as logrelay does it."""
    engine = make_engine(settings)
    try:
        yield engine
    finally:
        await engine.dispose()


async def add_destinations(settings: Settings, count: int) -> list[int]:
    from app.destinations import DestinationCreate, create_destination

    url = "http://127.0.0.1:9/hook"  # never sent to: serve runs without workers
    async with app_engine(settings) as engine, engine.begin() as conn:
        return [
            await create_destination(conn, DestinationCreate(name=f"bench{n}", url=url)) for n in range(count)
        ]


def load(settings: Settings, args: argparse.Namespace) -> None:
    wipe(settings)
    migrate.upgrade(settings)
    destinations = asyncio.run(add_destinations(settings, args.destinations))
    rows = outbox_rows(destinations, args.delivered, args.open, args.dead, args.failed_share)
    started = time.perf_counter()
    table = OutboxItem.__table__
    load_table(settings, table, COLUMNS, batched(rows))
    print(f"loaded in {time.perf_counter() - started:.0f}s", file=sys.stderr)


def held(settings: Settings) -> dict[str, int]:
    """Outbox rows by status (empty when the schema is missing)."""
    sql = "SELECT status, count(*) FROM outbox_items GROUP BY status"
    try:
        if settings.is_sqlite:
            with sqlite3.connect(sqlite_path(settings)) as db:
                return dict(db.execute(sql).fetchall())
        return dict(asyncio.run(_pg_fetch(settings, sql)))
    except Exception as error:  # no table yet (sqlite3's or asyncpg's error): load
        print(f"  no outbox yet ({error})", file=sys.stderr)
        return {}


def wanted(args: argparse.Namespace) -> dict[str, int]:
    failed = int(args.open * args.failed_share)
    counts = {"delivered": args.delivered, "pending": args.open - failed, "failed": failed}
    counts["dead"] = args.dead
    return {status: n for status, n in counts.items() if n}


async def _pg_execute(settings: Settings, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg_dsn(settings))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --- timing ----------------------------------------------------------------------------------------


def time_requests(client: httpx.Client, runs: int, destination_id: int) -> None:
    kinds = {"GET /metrics": "/metrics", "GET /api/destinations/{id}": f"/api/destinations/{destination_id}"}
    print(f"{'request':28} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    for name, path in kinds.items():
        timings: list[float] = []
        for i in range(runs + 2):
            started = time.perf_counter()
            response = client.get(path)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
            if i >= 2:  # the first ones warm the connection pool and the page cache
                timings.append(elapsed)
        p50, p95 = statistics.median(timings), percentile(timings, 0.95)
        print(f"{name:28} {p50:9.1f} {p95:9.1f} {max(timings):9.1f}", flush=True)
    shown = [line for line in client.get("/metrics").text.splitlines() if line.startswith("logrelay_outbox")]
    print("\n".join(shown))


def serve_and_time(settings: Settings, runs: int) -> None:
    destination_id = asyncio.run(_first_destination(settings))
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        server = start_server(settings.database_url, data_dir, port)
        try:
            headers = {"Authorization": f"Bearer {ADMIN}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as client:
                time_requests(client, runs, destination_id)
        finally:
            server.terminate()
            server.wait(timeout=30)


async def _first_destination(settings: Settings) -> int:
    from sqlalchemy import func, select

    from app.models import Destination

    async with app_engine(settings) as engine, engine.connect() as conn:
        return int(await conn.scalar(select(func.min(Destination.id))) or 0)


# --- plans -----------------------------------------------------------------------------------------


async def scrape_queries(settings: Settings, destination_id: int) -> list[tuple[str, Any]]:
    """The outbox statements (and their parameters) one destination's health runs, as sent."""
    from app.deliveries import destination_health

    async with app_engine(settings) as engine, engine.connect() as conn:
        with statements_naming(engine, "outbox_items") as seen:
            await destination_health(conn, destination_id)
    return seen


def explain(settings: Settings) -> None:
    destination_id = asyncio.run(_first_destination(settings))
    queries = asyncio.run(scrape_queries(settings, destination_id))
    if settings.is_sqlite:
        explain_sqlite(sqlite_path(settings), queries)
    else:
        asyncio.run(explain_postgres(pg_dsn(settings), queries))


def explain_sqlite(path: str, queries: list[tuple[str, Any]]) -> None:
    with sqlite3.connect(path) as db:
        for sql, parameters in queries:
            print("--- " + " ".join(sql.split()))
            for row in db.execute("EXPLAIN QUERY PLAN " + sql, parameters):
                print(f"    {row[3]}")
            timings = []
            for _ in range(5):
                started = time.perf_counter()
                db.execute(sql, parameters).fetchall()
                timings.append((time.perf_counter() - started) * 1000)
            print(f"    median of 5 runs: {statistics.median(timings):.1f} ms")


async def explain_postgres(dsn: str, queries: list[tuple[str, Any]]) -> None:
    """EXPLAIN ANALYZE each statement in a transaction rolled back: a DELETE's plan deletes nothing."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for sql, parameters in queries:
            print("--- " + " ".join(sql.split()))
            transaction = conn.transaction()
            await transaction.start()
            try:
                for row in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *parameters):
                    print(f"    {row[0]}")
            finally:
                await transaction.rollback()
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--delivered", type=int, default=100_000, help="delivered rows kept (N)")
    parser.add_argument("--open", type=int, default=2_000, help="open rows, pending or failed")
    parser.add_argument(
        "--failed-share",
        type=float,
        default=0.5,
        help="share of the open rows that failed (an outage leaves most pending: probes fail a batch each)",
    )
    parser.add_argument("--dead", type=int, default=1_000, help="dead letters")
    parser.add_argument("--destinations", type=int, default=2)
    parser.add_argument("--database-url", default="sqlite:////tmp/logrelay-scrape-bench.db")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--reload", action="store_true", help="load even when the rows are there")
    parser.add_argument("--explain", action="store_true", help="also print the scrape queries' plans")
    args = parser.parse_args()

    settings = Settings(database_url=args.database_url, _env_file=None)  # type: ignore[call-arg]
    if args.reload or held(settings) != wanted(args):
        print(f"loading {wanted(args)}...", file=sys.stderr)
        load(settings, args)
    started = time.perf_counter()
    migrate.upgrade(settings)
    print(f"migrate.upgrade: {time.perf_counter() - started:.1f}s", file=sys.stderr)
    kind = "SQLite" if settings.is_sqlite else "PostgreSQL"
    print(f"{kind}: outbox {held(settings)} over {args.destinations} destinations; {args.runs} runs each")
    serve_and_time(settings, args.runs)
    if args.explain:
        explain(settings)


if __name__ == "__main__":
    main()
