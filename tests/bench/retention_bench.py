"""Retention benchmark: purging ~1M events past EVENT_RETENTION, and what ingest feels meanwhile (not
collected by pytest).

Loads N events spread over the last 60 days (query_bench's generator) with bulk SQL, --held open
outbox rows (pending, over two destinations) for old events, which the purge must keep, and
--delivered rows of delivery history, which it must not read per chunk. The loaded
database is a template, reused while it holds the same rows (or load again with --reload): each run
purges a fresh copy of it (a file copy on SQLite, CREATE DATABASE ... TEMPLATE on PostgreSQL).

For each --chunks size, a run starts `logrelay serve` (workers off) on the copy and a load process
that POSTs --batch recent events per request at --rate requests/s; after --baseline seconds it runs
app.retention.purge_expired with EVENT_RETENTION=--retention-days, timing each chunk's transaction.
It prints the purge's chunks, total time and per-chunk p50/p99/max, and the ingest latency
p50/p99/max over the baseline (no purge) and during the purge, then checks what is left.

    .venv/bin/python tests/bench/retention_bench.py --events 1200000 --database-url sqlite:////tmp/ret.db
    .venv/bin/python tests/bench/retention_bench.py --events 1200000 \\
        --database-url postgresql://postgres@127.0.0.1:5432/dev_retention_bench

--explain prints the plans of one chunk's statements (SQLite's EXPLAIN QUERY PLAN without planner
statistics, PostgreSQL's EXPLAIN ANALYZE in a transaction rolled back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app import migrate, retention  # noqa: E402
from app.config import Settings  # noqa: E402
from app.cursor import Position  # noqa: E402
from app.models import LogEvent, OutboxItem  # noqa: E402
from tests.bench.query_bench import (  # noqa: E402
    SPAN,
    _pg_fetch,
    chunks,
    free_port,
    load_table,
    percentile,
    pg_dsn,
    sqlite_path,
    start_server,
)
from tests.bench.scrape_bench import (  # noqa: E402
    _pg_execute,
    _row,
    add_destinations,
    app_engine,
    explain_postgres,
    outbox_rows,
    wipe,
)
from tests.conftest import statements_naming  # noqa: E402
from tests.factories import make_event, make_stream_body  # noqa: E402

INGEST = "bench-ingest-token"  # the ingest token start_server gives logrelay
OUTBOX_COLUMNS = [c.name for c in OutboxItem.__table__.columns if c.name != "id"]
EVENT_COLUMNS = [c.name for c in LogEvent.__table__.columns]


# --- the template ----------------------------------------------------------------------------------


def moment(settings: Settings, at: datetime) -> str:
    """`at` as an SQL literal comparable with a date column (SQLite's text, PostgreSQL's timestamptz)."""
    text = f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"
    return f"'{text}'" if settings.is_sqlite else f"'{text}+00'"


def old_log_ids(settings: Settings, before: datetime, count: int) -> list[str]:
    """`count` log ids of events dated before `before`, spread over them."""
    sql = f"SELECT log_id FROM log_events WHERE date < {moment(settings, before)} ORDER BY random()"
    sql += f" LIMIT {count}"
    if settings.is_sqlite:
        with sqlite3.connect(sqlite_path(settings)) as db:
            return [row[0] for row in db.execute(sql)]
    return [row[0] for row in asyncio.run(_pg_fetch(settings, sql))]


def load(settings: Settings, args: argparse.Namespace) -> None:
    wipe(settings)
    migrate.upgrade(settings)
    started = time.perf_counter()
    load_table(settings, LogEvent.__table__, EVENT_COLUMNS, chunks(args.events, 50_000))
    destinations = asyncio.run(add_destinations(settings, 2))
    cutoff = datetime.now(UTC) - timedelta(days=args.retention_days)
    held = old_log_ids(settings, cutoff, args.held)
    now = datetime.now(UTC)
    at = OUTBOX_COLUMNS.index("log_id")
    rows = [_row(destinations[i % 2], i, "pending", now) for i in range(len(held))]
    rows = [(*row[:at], log_id, *row[at + 1 :]) for row, log_id in zip(rows, held, strict=True)]
    # The delivered history (DELIVERY_KEEP_DELIVERED), which must not be read per chunk.
    rows += outbox_rows(destinations, args.delivered, 0, 0)
    load_table(settings, OutboxItem.__table__, OUTBOX_COLUMNS, [rows])
    print(f"loaded in {time.perf_counter() - started:.0f}s", file=sys.stderr)


def counts(settings: Settings) -> tuple[int, int]:
    """(events, outbox rows); (0, 0) when the schema is missing."""
    sql = "SELECT (SELECT count(*) FROM log_events), (SELECT count(*) FROM outbox_items)"
    try:
        if settings.is_sqlite:
            with sqlite3.connect(sqlite_path(settings)) as db:
                found = db.execute(sql).fetchone()
        else:
            found = asyncio.run(_pg_fetch(settings, sql))[0]
    except Exception as error:  # no table yet (sqlite3's or asyncpg's error): load
        print(f"  nothing loaded yet ({error})", file=sys.stderr)
        return 0, 0
    return int(found[0]), int(found[1])


def old_events(settings: Settings, before: datetime) -> int:
    sql = f"SELECT count(*) FROM log_events WHERE date < {moment(settings, before)}"
    if settings.is_sqlite:
        with sqlite3.connect(sqlite_path(settings)) as db:
            return int(db.execute(sql).fetchone()[0])
    return int(asyncio.run(_pg_fetch(settings, sql))[0][0])


@contextlib.contextmanager
def fresh_copy(settings: Settings) -> Iterator[Settings]:
    """Settings on a copy of the template database, dropped afterwards."""
    if settings.is_sqlite:
        with sqlite3.connect(sqlite_path(settings)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        copy = Path(tempfile.mkdtemp(prefix="retention-bench-")) / "copy.db"
        shutil.copy(sqlite_path(settings), copy)
        try:
            yield Settings(database_url=f"sqlite:///{copy}", _env_file=None)  # type: ignore[call-arg]
        finally:
            shutil.rmtree(copy.parent)
        return
    template = settings.database_url.rsplit("/", 1)[1]
    admin = settings.model_copy(
        update={"database_url": settings.database_url.rsplit("/", 1)[0] + "/postgres"}
    )
    asyncio.run(_pg_execute(admin, f"DROP DATABASE IF EXISTS {template}_run"))
    asyncio.run(_pg_execute(admin, f"CREATE DATABASE {template}_run TEMPLATE {template}"))
    try:
        yield settings.model_copy(update={"database_url": settings.database_url + "_run"})
    finally:
        asyncio.run(_pg_execute(admin, f"DROP DATABASE IF EXISTS {template}_run WITH (FORCE)"))


# --- ingest load -----------------------------------------------------------------------------------


def post_load(base_url: str, rate: float, batch: int, stop: Any, results: Any) -> None:
    """In a process of its own: POST `batch` events dated now, `rate` requests a second (one at a time;
    late requests go at once), until `stop` is set; sends back (sent at, ms, status) per request."""
    asyncio.run(_post_load(base_url, rate, batch, stop, results))


async def _post_load(base_url: str, rate: float, batch: int, stop: Any, results: Any) -> None:
    timings: list[tuple[float, float, int]] = []
    ids = itertools.count()
    async with httpx.AsyncClient(base_url=base_url, timeout=60, headers={"Authorization": INGEST}) as client:
        next_at = time.time()
        while not stop.is_set():
            now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            events = [make_event(log_id=f"load-{next(ids)}", date=now, type="s") for _ in range(batch)]
            sent = time.time()
            response = await client.post("/api/logs", content=make_stream_body(events))
            timings.append((sent, (time.time() - sent) * 1000, response.status_code))
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.time()))
    results.put(timings)


def latency(timings: list[tuple[float, float, int]], start: float, end: float) -> str:
    ms = [t for sent, t, _ in timings if start <= sent < end]
    failed = sum(1 for sent, _, status in timings if start <= sent < end and status != 200)
    if not ms:
        return "no requests"
    return (
        f"{len(ms):6} requests  p50 {statistics.median(ms):7.1f}  p99 {percentile(ms, 0.99):7.1f}  "
        f"max {max(ms):7.1f} ms  non-200 {failed}"
    )


# --- the purge -------------------------------------------------------------------------------------


class TimedEngine:
    """The engine, with each transaction timed from its begin to its commit."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.seconds: list[float] = []

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[Any]:
        started = time.perf_counter()
        async with self.engine.begin() as conn:
            yield conn
        self.seconds.append(time.perf_counter() - started)


async def purge(
    settings: Settings, now: datetime, pace: retention.Pace
) -> tuple[retention.Purged, list[float], float]:
    async with app_engine(settings) as engine:
        timed = TimedEngine(engine)
        context: Any = SimpleNamespace(settings=settings, engine=timed)
        started = time.perf_counter()
        purged = await retention.purge_expired(context, now, pace=pace)
        return purged, timed.seconds, time.perf_counter() - started


def run(template: Settings, args: argparse.Namespace, chunk: int) -> None:
    with fresh_copy(template) as settings, tempfile.TemporaryDirectory(prefix="retention-bench-") as data:
        settings = settings.model_copy(update={"event_retention": timedelta(days=args.retention_days)})
        port = free_port()
        server = start_server(settings.database_url, data, port)
        spawn = multiprocessing.get_context("spawn")
        stop, results = spawn.Event(), spawn.Queue()
        load = spawn.Process(
            target=post_load, args=(f"http://127.0.0.1:{port}", args.rate, args.batch, stop, results)
        )
        try:
            load.start()
            time.sleep(2)  # the load's start-up and warm-up
            baseline = time.time()
            time.sleep(args.baseline)
            began, now = time.time(), datetime.now(UTC)
            purged, seconds, total = asyncio.run(purge(settings, now, retention.Pace(chunk, args.pause)))
            ended = time.time()
            time.sleep(1)
            stop.set()
            timings = results.get(timeout=120)
            load.join(timeout=30)
        finally:
            stop.set()
            server.terminate()
            server.wait(timeout=30)
        ms = [s * 1000 for s in seconds]
        print(
            f"chunk {chunk:6}, pause {args.pause:g}s: purged {purged.events} events in {total:.1f}s "
            f"({purged.events / total:,.0f}/s), "
            f"{len(ms)} transactions: p50 {statistics.median(ms):.1f}  p99 {percentile(ms, 0.99):.1f}  "
            f"max {max(ms):.1f} ms"
        )
        print(f"  ingest without purge: {latency(timings, baseline, began)}")
        print(f"  ingest during purge:  {latency(timings, began, ended)}")
        cutoff = now - timedelta(days=args.retention_days)
        print(f"  left: {old_events(settings, cutoff)} old events, {args.held} held", flush=True)


# --- plans -----------------------------------------------------------------------------------------


async def chunk_statements(settings: Settings, chunk: int) -> list[tuple[str, Any]]:
    """The statements of one chunk in the middle of the old events, as sent (rolled back)."""
    before = datetime.now(UTC) - SPAN / 2
    async with app_engine(settings) as engine, engine.connect() as conn:
        with statements_naming(engine, "log_events") as seen:
            transaction = await conn.begin()
            await retention.purge_events_chunk(conn, before, Position(before - SPAN / 4, ""), chunk)
            await transaction.rollback()
    return seen


def explain(settings: Settings, chunk: int) -> None:
    queries = asyncio.run(chunk_statements(settings, chunk))
    if settings.is_sqlite:
        with sqlite3.connect(sqlite_path(settings)) as db:
            for sql, parameters in queries:
                print("--- " + " ".join(sql.split()))
                for row in db.execute("EXPLAIN QUERY PLAN " + sql, parameters):
                    print(f"    {row[3]}")
        return
    asyncio.run(explain_postgres(pg_dsn(settings), queries))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_200_000, help="events over the last 60 days")
    parser.add_argument("--held", type=int, default=10_000, help="old events with a pending outbox row")
    parser.add_argument("--delivered", type=int, default=1_000_000, help="delivered outbox rows")
    parser.add_argument("--retention-days", type=float, default=10.0)
    parser.add_argument("--chunks", default="500,2000,5000,20000", help="chunk sizes, a run each")
    parser.add_argument("--pause", type=float, default=retention.Pace().pause, help="seconds between chunks")
    parser.add_argument("--rate", type=float, default=50.0, help="ingest requests a second")
    parser.add_argument("--batch", type=int, default=10, help="events per ingest request")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of ingest before the purge")
    parser.add_argument("--database-url", default="sqlite:////tmp/logrelay-retention-bench.db")
    parser.add_argument("--reload", action="store_true", help="load even when the rows are there")
    parser.add_argument("--explain", action="store_true", help="print one chunk's plans and stop")
    args = parser.parse_args()

    settings = Settings(database_url=args.database_url, _env_file=None)  # type: ignore[call-arg]
    if args.reload or counts(settings) != (args.events, args.held + args.delivered):
        print(
            f"loading {args.events} events, {args.held} held, {args.delivered} delivered...", file=sys.stderr
        )
        load(settings, args)
    migrate.upgrade(settings)
    if args.explain:
        explain(settings, int(args.chunks.split(",")[0]))
        return
    kind = "SQLite" if settings.is_sqlite else "PostgreSQL"
    print(
        f"{kind}: {args.events} events over {SPAN.days} days, {args.held} of the old ones held, "
        f"{args.delivered} delivered outbox rows; "
        f"retention {args.retention_days} days; ingest {args.rate:g} requests/s of {args.batch} events"
    )
    for chunk in (int(c) for c in args.chunks.split(",")):
        run(settings, args, chunk)


if __name__ == "__main__":
    main()
