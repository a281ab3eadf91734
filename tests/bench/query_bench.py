"""Query API latency benchmark (not collected by pytest).

Loads N generated Auth0-shaped events straight into the database (bulk SQL in big transactions, the
indexes built after the load, as a restore would), starts `logrelay serve` on it, and times each kind
of query through real HTTP, printing p50/p95/max per kind. A loaded database is reused: the load runs
only when the table holds fewer than N events (or with --reload).

    .venv/bin/python tests/bench/query_bench.py --events 1000000 --database-url sqlite:////tmp/qbench.db
    .venv/bin/python tests/bench/query_bench.py --events 1000000 \\
        --database-url postgresql://query_bench@127.0.0.1:5432/test_bench

On a shared server, a role whose search_path is its own schema keeps the loaded table apart from
other tools that truncate the database's public tables:

    CREATE ROLE query_bench LOGIN; CREATE SCHEMA query_bench AUTHORIZATION query_bench;
    ALTER ROLE query_bench IN DATABASE test_bench SET search_path = query_bench;
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Table

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.auth0.catalog import category_of  # noqa: E402
from app.config import Settings  # noqa: E402
from app.cursor import Position, encode_cursor  # noqa: E402
from app.models import LogEvent  # noqa: E402

TOKEN = "bench-read-token"
SPAN = timedelta(days=60)
# (type, weight, description): roughly a busy B2C tenant, successes dominating.
TYPES = [
    ("s", 300, "Successful login"),
    ("seacft", 120, "Authorization Code for Access Token"),
    ("ssa", 100, "Successful silent authentication"),
    ("sertft", 50, "Refresh Token for Access Token"),
    ("slo", 40, "User successfully logged out"),
    ("sapi", 40, "Update a User"),
    ("gd_auth_succeed", 20, "Second factor authentication succeeded"),
    ("ss", 20, "Successful signup"),
    ("scp", 10, "Successful change password"),
    ("fp", 80, "Wrong email or password."),
    ("fu", 30, "Wrong email or username."),
    ("f", 20, "Invalid thumbprint"),
    ("fsa", 20, "Login required"),
    ("feacft", 10, "Invalid authorization code"),
    ("fcoa", 8, "Wrong email or password."),
    ("api_limit", 4, "Global per second default group limit has been reached"),
    ("limit_wc", 2, "An IP address is blocked because it attempted too many failed logins."),
    ("pwd_leak", 1, "Blocked because password was found in a data breach"),
    ("w", 5, "Warning during login: email not verified"),
    ("depnote", 3, "Deprecation notice: legacy grant"),
    ("gd_otp_rate_limit_exceed", 1, "Too many failures"),
]
CLIENTS = [(f"client{n:02d}" + "x" * 24, f"App {n}") for n in range(30)]
CONNECTIONS = ["Username-Password-Authentication", "google-oauth2", "github", "sms", "email", "samlp-corp"]
USERS = 20_000
IPS = 100_000


# --- generating and loading ------------------------------------------------------------------------


def generate(n: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Events in date order over the last SPAN; users and IPs skewed (a few heavy, many light)."""
    rng = random.Random(seed)
    codes = [t[0] for t in TYPES]
    weights = [t[1] for t in TYPES]
    described = {t[0]: t[2] for t in TYPES}
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - SPAN
    step = SPAN / n
    date = start
    for i in range(n):
        if rng.random() > 0.02:  # 2% share the previous event's millisecond
            date = start + step * i + timedelta(milliseconds=rng.randrange(0, 1000))
            date = date.replace(microsecond=date.microsecond // 1000 * 1000)
        code = rng.choices(codes, weights)[0]
        user = min(int(rng.paretovariate(1.1)) - 1, USERS - 1) if rng.random() < 0.5 else rng.randrange(USERS)
        client_id, client_name = CLIENTS[min(int(rng.expovariate(0.3)), len(CLIENTS) - 1)]
        ip = min(int(rng.paretovariate(1.2)), IPS) if rng.random() < 0.3 else rng.randrange(IPS)
        has_user = code not in ("fu", "api_limit") and rng.random() > 0.05
        data: dict[str, Any] = {
            "date": date.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "type": code,
            "description": described[code],
            "connection": CONNECTIONS[min(int(rng.expovariate(1.0)), len(CONNECTIONS) - 1)],
            "connection_id": "con_" + "a" * 16,
            "client_id": client_id,
            "client_name": client_name,
            "ip": f"10.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}",
            "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/130.0",
            "details": {"prompts": [], "initiatedAt": 1763892000000, "completedAt": 1763892000120},
            "hostname": "tenant.eu.auth0.com",
            "user_name": f"user{user}@example.com" if code != "sapi" else None,
            "strategy": "auth0",
            "strategy_type": "database",
            "log_id": f"900{date:%Y%m%d%H%M%S%f}{i:032d}",
        }
        if has_user:
            data["user_id"] = f"auth0|{user:024x}"
        yield data


def rows(n: int) -> Iterator[dict[str, Any]]:
    received_at = datetime.now(UTC)
    for data in generate(n):
        code = data["type"]
        yield {
            "log_id": data["log_id"],
            "date": datetime.fromisoformat(data["date"]),
            "type": code,
            "category": category_of(code),
            "user_id": data.get("user_id"),
            "user_name": data.get("user_name"),
            "client_id": data["client_id"],
            "client_name": data["client_name"],
            "connection": data["connection"],
            "ip": data["ip"],
            "description": data["description"],
            "data": orjson.dumps(data).decode(),
            "source": "stream",
            "received_at": received_at,
            "id_generated": False,
        }


COLUMNS = [c.name for c in LogEvent.__table__.columns]
Row = tuple[Any, ...]


def chunks(n: int, size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows(n):
        batch.append(tuple(row[c] for c in COLUMNS))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_sqlite(path: str, n: int) -> None:
    load_sqlite_table(path, LogEvent.__table__, COLUMNS, chunks(n, 50_000))
    # No ANALYZE: a live logrelay never runs it, and the plans must hold without statistics.


async def load_postgres(dsn: str, n: int) -> None:
    await load_postgres_table(dsn, LogEvent.__table__, COLUMNS, chunks(n, 50_000))


def load_sqlite_table(path: str, table: Table, columns: list[str], batches: Iterable[list[Row]]) -> None:
    """Empty `table` and insert the batches (tuples in `columns` order), one transaction each; its
    indexes are dropped for the load and built after it, as a restore would."""
    from sqlalchemy import create_engine
    from sqlalchemy.schema import CreateIndex

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # a bulk load, not ingest: durability is not measured here
    db.execute("PRAGMA cache_size=-1000000")
    for index in table.indexes:
        db.execute(f"DROP INDEX IF EXISTS {index.name}")
    db.execute(f"DELETE FROM {table.name}")
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    stamp = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DateTime text form, naive UTC
    done = 0
    for batch in batches:
        converted = [
            tuple(v.astimezone(UTC).strftime(stamp) if isinstance(v, datetime) else v for v in row)
            for row in batch
        ]
        db.execute("BEGIN")
        db.executemany(sql, converted)
        db.execute("COMMIT")
        done += len(batch)
        print(f"  loaded {done}", file=sys.stderr, flush=True)
    dialect = create_engine("sqlite://").dialect
    for index in table.indexes:
        started = time.perf_counter()
        db.execute(str(CreateIndex(index).compile(dialect=dialect)))
        print(f"  index {index.name}: {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    db.close()


async def load_postgres_table(
    dsn: str, table: Table, columns: list[str], batches: Iterable[list[Row]]
) -> None:
    """load_sqlite_table's PostgreSQL twin (COPY), then VACUUM ANALYZE, as autovacuum would."""
    import asyncpg
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex

    conn = await asyncpg.connect(dsn)
    try:
        for index in table.indexes:
            await conn.execute(f"DROP INDEX IF EXISTS {index.name}")
        await conn.execute(f"TRUNCATE {table.name}")
        done = 0
        for batch in batches:
            await conn.copy_records_to_table(table.name, records=batch, columns=columns)
            done += len(batch)
            print(f"  loaded {done}", file=sys.stderr, flush=True)
        for index in table.indexes:
            started = time.perf_counter()
            await conn.execute(str(CreateIndex(index).compile(dialect=postgresql.dialect())))
            print(f"  index {index.name}: {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
        await conn.execute(f"VACUUM ANALYZE {table.name}")
    finally:
        await conn.close()


def load_table(settings: Settings, table: Table, columns: list[str], batches: Iterable[list[Row]]) -> None:
    """load_sqlite_table or load_postgres_table, whichever the database is."""
    if settings.is_sqlite:
        load_sqlite_table(sqlite_path(settings), table, columns, batches)
    else:
        asyncio.run(load_postgres_table(pg_dsn(settings), table, columns, batches))


def count_events(settings: Settings) -> int:
    if settings.is_sqlite:
        with sqlite3.connect(sqlite_path(settings)) as db:
            return int(db.execute("SELECT count(*) FROM log_events").fetchone()[0])
    return int(asyncio.run(_pg_fetch(settings, "SELECT count(*) FROM log_events"))[0][0])


def sample(settings: Settings, where: str = "", k: int = 200) -> list[tuple[datetime, str]]:
    """k (date, log_id) positions spread over the table, optionally among rows matching `where`."""
    sql = f"SELECT date, log_id FROM log_events {where} ORDER BY random() LIMIT {k}"
    if settings.is_sqlite:
        with sqlite3.connect(sqlite_path(settings)) as db:
            found = db.execute(sql).fetchall()
        return [(datetime.fromisoformat(d).replace(tzinfo=UTC), i) for d, i in found]
    return [(d, i) for d, i in asyncio.run(_pg_fetch(settings, sql))]


async def _pg_fetch(settings: Settings, sql: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(pg_dsn(settings))
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def sqlite_path(settings: Settings) -> str:
    return settings.database_url.split("///", 1)[1]


def pg_dsn(settings: Settings) -> str:
    return settings.database_url.replace("postgresql+asyncpg://", "postgresql://")


# --- timing ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(database_url: str, data_dir: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATA_DIR": data_dir,
        "API_TOKEN": TOKEN,
        "LOG_STREAM_TOKEN": "bench-ingest-token",
        "ADMIN_TOKEN": "bench-admin-token",
        "RUN_WORKERS": "false",
        "SERVICE_LOG_LEVEL": "warning",
        "PORT": str(port),
    }
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError("logrelay serve did not start")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run_kinds(client: httpx.Client, settings: Settings, runs: int, rng: random.Random) -> None:
    end = datetime.now(UTC)
    heavy_users = [f"auth0|{u:024x}" for u in range(20)]
    any_user = lambda: f"auth0|{rng.randrange(USERS):024x}"  # noqa: E731
    positions = sample(settings, k=runs)
    failures = sample(settings, "WHERE category = 'failure'", k=runs)
    successes = sample(settings, "WHERE type = 's'", k=runs)

    def window(hours: float) -> dict[str, str]:
        start = end - SPAN + (SPAN - timedelta(hours=hours)) * rng.random()
        return {"since": start.isoformat(), "until": (start + timedelta(hours=hours)).isoformat()}

    def cursor(position: tuple[datetime, str]) -> str:
        return encode_cursor(Position(*position))

    kinds: dict[str, Callable[[int], tuple[str, dict[str, Any]]]] = {
        "latest page (no filter)": lambda i: ("/api/events", {}),
        "user_id (random user)": lambda i: ("/api/events", {"user_id": any_user()}),
        "user_id (heavy user)": lambda i: ("/api/events", {"user_id": rng.choice(heavy_users)}),
        "user_name": lambda i: ("/api/events", {"user_name": f"user{rng.randrange(USERS)}@example.com"}),
        "ip": lambda i: ("/api/events", {"ip": f"10.0.{rng.randrange(4)}.{rng.randrange(256)}"}),
        "type (any code)": lambda i: ("/api/events", {"type": rng.choice(TYPES)[0]}),
        "type (rare: pwd_leak)": lambda i: ("/api/events", {"type": "pwd_leak"}),
        "types (fp,fu,f)": lambda i: ("/api/events", {"type": "fp,fu,f"}),
        "category": lambda i: ("/api/events", {"category": ("failure", "warning", "other")[i % 3]}),
        "time range (1 hour)": lambda i: ("/api/events", window(1)),
        "time range (1 day)": lambda i: ("/api/events", window(24)),
        "type + time range (1 day)": lambda i: ("/api/events", {"type": "fp", **window(24)}),
        "category + user_id": lambda i: ("/api/events", {"category": "failure", "user_id": any_user()}),
        "category + heavy user_id": lambda i: (
            "/api/events",
            {"category": "failure", "user_id": rng.choice(heavy_users)},
        ),
        "type s + user_id": lambda i: ("/api/events", {"type": "s", "user_id": any_user()}),
        "deep page (no filter)": lambda i: ("/api/events", {"cursor": cursor(positions[i % len(positions)])}),
        "deep page (category=failure)": lambda i: (
            "/api/events",
            {"category": "failure", "cursor": cursor(failures[i % len(failures)])},
        ),
        "deep page (type=s)": lambda i: (
            "/api/events",
            {"type": "s", "cursor": cursor(successes[i % len(successes)])},
        ),
        "event by id": lambda i: (f"/api/events/{positions[i % len(positions)][1]}", {}),
        "stats (1 day, hourly)": lambda i: ("/api/stats", {"interval": "hour", **window(24)}),
    }
    print(f"{'kind':34} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'events/page':>12}")
    for name, make in kinds.items():
        timings: list[float] = []
        sizes: list[int] = []
        for i in range(runs + 5):
            path, params = make(i)
            started = time.perf_counter()
            response = client.get(path, params=params)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
            if i >= 5:  # the first few warm the connection pool
                timings.append(elapsed)
                body = response.json()
                sizes.append(len(body.get("events", [body])))
        print(
            f"{name:34} {statistics.median(timings):8.1f} {percentile(timings, 0.95):8.1f} "
            f"{max(timings):8.1f} {statistics.mean(sizes):12.0f}",
            flush=True,
        )
    # Paging deep by following next_cursor, as a client does.
    timings = []
    params: dict[str, Any] = {"category": "failure"}
    for _ in range(runs):
        started = time.perf_counter()
        body = client.get("/api/events", params=params).json()
        timings.append((time.perf_counter() - started) * 1000)
        params["cursor"] = body["next_cursor"]
    print(
        f"{'walk ' + str(runs) + ' pages (failure)':34} {statistics.median(timings):8.1f} "
        f"{percentile(timings, 0.95):8.1f} {max(timings):8.1f}"
    )
    started = time.perf_counter()
    lines = 0
    with client.stream("GET", "/api/events/export", params={"category": "failure", **window(24 * 7)}) as r:
        for _ in r.iter_lines():
            lines += 1
    seconds = time.perf_counter() - started
    print(f"export (failure, 7 days): {lines} events in {seconds:.2f}s ({lines / seconds:,.0f} events/s)")


def explain(settings: Settings) -> None:
    """Print the plan of each query kind (SQLite: also as planned without ANALYZE statistics)."""
    from sqlalchemy import select
    from sqlalchemy.dialects import postgresql, sqlite

    from app.query import EventQuery, page_statement

    deep = sample(settings, k=1)[0]
    day = datetime.now(UTC) - SPAN / 2
    queries = {
        "latest": (EventQuery(), None),
        "user_id": (EventQuery(user_id=f"auth0|{5:024x}"), None),
        "user_name": (EventQuery(user_name="user5@example.com"), None),
        "ip": (EventQuery(ip="10.0.1.2"), None),
        "type": (EventQuery(types=("fp",)), None),
        "types fp,f": (EventQuery(types=("fp", "f")), None),
        "category failure": (EventQuery(category="failure"), None),
        "category warning": (EventQuery(category="warning"), None),
        "category other": (EventQuery(category="other"), None),
        "time range": (EventQuery(since=day, until=day + timedelta(days=1)), None),
        "type + time range": (EventQuery(types=("fp",), since=day, until=day + timedelta(days=1)), None),
        "category + user_id": (EventQuery(category="failure", user_id=f"auth0|{5:024x}"), None),
        "type + user_id": (EventQuery(types=("s",), user_id=f"auth0|{77:024x}"), None),
        "deep (no filter)": (EventQuery(), Position(*deep)),
        "deep (category failure)": (EventQuery(category="failure"), Position(*deep)),
    }
    dialect = sqlite.dialect() if settings.is_sqlite else postgresql.dialect()
    name = "sqlite" if settings.is_sqlite else "postgresql"
    compiled = {
        kind: str(
            page_statement(name, q, 101, after).compile(
                dialect=dialect, compile_kwargs={"literal_binds": True}
            )
        )
        for kind, (q, after) in queries.items()
    }
    from app.models import LogEvent as Model

    by_id = select(Model.log_id).where(Model.log_id == deep[1])
    compiled["event by id"] = str(by_id.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    if settings.is_sqlite:
        with sqlite3.connect(sqlite_path(settings), isolation_level=None) as db:
            analyzed = db.execute("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat1'").fetchone()
            runs = (("with ANALYZE statistics", False), ("without statistics", True))
            for label, reset in runs if analyzed else runs[1:]:
                print(f"--- SQLite plans {label}")
                if reset and analyzed:
                    db.execute("BEGIN")
                    db.execute("DELETE FROM sqlite_stat1")
                    db.execute("ANALYZE sqlite_schema")  # reloads the (now empty) statistics
                for kind, sql in compiled.items():
                    plan = "; ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql))
                    print(f"{kind:26} {plan}")
                if reset and analyzed:
                    db.execute("ROLLBACK")
        return

    async def run() -> None:
        import asyncpg

        conn = await asyncpg.connect(pg_dsn(settings))
        try:
            for kind, sql in compiled.items():
                plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql)
                print(f"--- {kind}")
                print("\n".join(r[0] for r in plan))
        finally:
            await conn.close()

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--database-url", default="sqlite:////tmp/logrelay-query-bench.db")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--reload", action="store_true", help="load even when the table is already full")
    parser.add_argument("--explain", action="store_true", help="print the query plans and stop")
    args = parser.parse_args()

    settings = Settings(database_url=args.database_url, _env_file=None)  # type: ignore[call-arg]
    migrate.upgrade(settings)
    present = count_events(settings)
    if args.reload or present < args.events:
        print(f"loading {args.events} events ({present} present)...", file=sys.stderr)
        started = time.perf_counter()
        if settings.is_sqlite:
            load_sqlite(sqlite_path(settings), args.events)
        else:
            asyncio.run(load_postgres(pg_dsn(settings), args.events))
        print(f"loaded in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    kind = "SQLite" if settings.is_sqlite else "PostgreSQL"
    before = count_events(settings)
    print(f"{before} events on {kind}; {args.runs} runs per kind")

    if args.explain:
        explain(settings)
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        server = start_server(args.database_url, data_dir, port)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
                run_kinds(client, settings, args.runs, random.Random(1))
        finally:
            server.terminate()
            server.wait(timeout=30)
    if count_events(settings) != before:
        sys.exit("the table changed during the run (another process uses this database): figures void")


if __name__ == "__main__":
    main()
