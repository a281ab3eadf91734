"""What logrelay's own SQLite schema costs, without logrelay (not collected by pytest).

Raw sqlite3 inserts the loadgen's events into `log_events` as logrelay creates it, in transactions of
--txn rows (group commit reaches about 800 at batch 100), in four variants, and beside them the
storage ceiling's table (storage_bench's sqlite3-wal-full: primary key only, transactions of 100):

- full:       the schema as it is, synchronous=FULL (what logrelay runs)
- normal:     the same with synchronous=NORMAL: what the fsync of each commit costs
- no-random:  without the indexes on random keys (user_id, user_name, ip)
- no-index:   without any secondary index

Each variant starts from an empty file; the variants take turns, --reps times, and the medians are
printed with their ratio to the ceiling.

    python tests/bench/schema_bench.py --rows 60000 --reps 3
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT.parent / "shared" / "bench")]

from loadgen import EventFactory  # type: ignore[import-not-found]  # noqa: E402

from app.auth0.catalog import category_of  # noqa: E402
from app.db import Base  # noqa: E402
from app.models import LogEvent  # noqa: E402, F401 (registers the tables on Base)

COLUMNS = (
    "log_id, date, type, category, user_id, user_name, client_id, client_name, connection, ip, "
    "description, data, source, received_at, id_generated"
)
INSERT = f"INSERT INTO log_events ({COLUMNS}) VALUES ({', '.join('?' * 15)}) ON CONFLICT(log_id) DO NOTHING"
RANDOM_KEYS = ("ix_log_events_user_id_date", "ix_log_events_user_name_date", "ix_log_events_ip_date")
CEILING_TABLE = """CREATE TABLE events (log_id TEXT PRIMARY KEY, date TEXT NOT NULL, type TEXT NOT NULL,
  user_id TEXT, client_id TEXT, ip TEXT, raw TEXT NOT NULL)"""
Row = tuple[Any, ...]


def event_rows(count: int) -> list[Row]:
    """The loadgen's events as logrelay stores them (the envelope's `data`, its columns)."""
    factory, rows = EventFactory(7), []
    for i in range(count):
        envelope = orjson.loads(factory.event(i))
        data, log_id = envelope["data"], envelope["log_id"]
        columns = [data.get(name) for name in ("user_id", "user_name", "client_id", "client_name")]
        columns += [data.get(name) for name in ("connection", "ip", "description")]
        category = category_of(data.get("type"))
        date = data["date"]
        rows.append(
            (log_id, date, data.get("type"), category, *columns, orjson.dumps(data), "stream", date, 0)
        )
    return rows


def fresh(folder: Path, name: str, schema: bool) -> sqlite3.Connection:
    path = folder / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if schema:
        engine = create_engine(f"sqlite:///{path}")
        Base.metadata.create_all(engine)
        engine.dispose()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA cache_size=-65536")  # as app.db sets them
    db.execute("PRAGMA wal_autocheckpoint=20000")
    return db


def timed(db: sqlite3.Connection, sql: str, rows: Sequence[Row], txn: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(rows), txn):
        db.execute("BEGIN")
        db.executemany(sql, rows[start : start + txn])
        db.execute("COMMIT")
    db.close()
    return len(rows) / (time.perf_counter() - started)


def drop(db: sqlite3.Connection, names: Sequence[str]) -> None:
    for name in names:
        db.execute(f"DROP INDEX {name}")


def variants(folder: Path, rows: list[Row], txn: int) -> dict[str, Callable[[], float]]:
    ceiling_rows = [(r[0], r[1], r[2], r[4], r[6], r[9], r[11]) for r in rows]
    ceiling_sql = "INSERT INTO events VALUES (?,?,?,?,?,?,?) ON CONFLICT(log_id) DO NOTHING"

    def ceiling() -> float:
        db = fresh(folder, "ceiling", schema=False)
        db.execute(CEILING_TABLE)
        return timed(db, ceiling_sql, ceiling_rows, 100)

    def full() -> float:
        return timed(fresh(folder, "full", schema=True), INSERT, rows, txn)

    def normal() -> float:
        db = fresh(folder, "normal", schema=True)
        db.execute("PRAGMA synchronous=NORMAL")
        return timed(db, INSERT, rows, txn)

    def no_random() -> float:
        db = fresh(folder, "no-random", schema=True)
        drop(db, RANDOM_KEYS)
        return timed(db, INSERT, rows, txn)

    def no_index() -> float:
        db = fresh(folder, "no-index", schema=True)
        # sql IS NULL: the primary key's own index, which cannot be dropped
        made = "SELECT name FROM sqlite_schema WHERE tbl_name = 'log_events' AND sql NOT NULL AND type = ?"
        drop(db, [name for (name,) in db.execute(made, ("index",)).fetchall()])
        return timed(db, INSERT, rows, txn)

    return {"ceiling": ceiling, "full": full, "normal": normal, "no-random": no_random, "no-index": no_index}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--txn", type=int, default=800, help="rows per transaction of the schema variants")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    rows = event_rows(args.rows)
    with tempfile.TemporaryDirectory(prefix="schema-bench-", dir=os.environ.get("BENCH_TMP")) as folder:
        runs = variants(Path(folder), rows, args.txn)
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.reps):
            for name, run in runs.items():
                rates[name].append(run())
    ceiling = statistics.median(rates["ceiling"])
    print(f"{'variant':10} {'rows/s':>8}  ratio  runs")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:10} {median:8.0f}  {median / ceiling:5.2f}  {[round(v) for v in values]}")


if __name__ == "__main__":
    main()
