"""Ingest benchmark: `logrelay serve` as a user runs it, driven by shared/bench/loadgen.py, beside the
raw storage ceiling from shared/bench/storage_bench.py measured in the same run.

    python tests/bench/ingest_bench.py --databases sqlite,postgresql --batches 1,10,100 --runs 3

With `--prefill N` each timed run starts on a store already holding N events.

It prints one JSON line per run and a summary table: events/s, requests/s, p50/p99 latency, the raw
ceiling, their ratio, and whether the stored count equals the unique events sent (loadgen sends
duplicates too, `--dup-ratio`). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT.parent / "shared" / "bench"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "logrelay_bench"
CEILING = {"sqlite": "sqlite3-wal-full", "postgresql": "pg-asyncpg-executemany"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_database(kind: str, workdir: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {PG_DB}")
    return f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"


def count_events(kind: str, url: str) -> int:
    if kind == "sqlite":
        import sqlite3

        with sqlite3.connect(url.split("///", 1)[1]) as conn:
            return int(conn.execute("SELECT count(*) FROM log_events").fetchone()[0])
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM log_events").fetchone()
        return int(row[0]) if row else 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Service:
    """`logrelay serve` on a fresh database, in a subprocess."""

    def __init__(self, kind: str, workers: int, env: dict[str, str]) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="logrelay-bench-"))
        self.kind = kind
        self.url = fresh_database(kind, self.workdir)
        self.port = free_port()
        self.env = (
            os.environ
            | {
                "DATABASE_URL": self.url,
                "DATA_DIR": str(self.workdir / "data"),
                "LOG_STREAM_TOKEN": "bench-token",
                "RUN_WORKERS": "false",
                "SERVICE_LOG_LEVEL": "warning",
            }
            | env
        )
        logrelay = str(Path(sys.executable).with_name("logrelay"))
        if kind != "sqlite":
            subprocess.run([logrelay, "migrate"], env=self.env, check=True, capture_output=True)
        self.proc = subprocess.Popen(
            [logrelay, "serve", "--port", str(self.port), "--workers", str(workers)],
            env=self.env,
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("logrelay serve did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def loadgen(
    port: int,
    batch: int,
    concurrency: int,
    duration: float,
    dup_ratio: float,
    engine: str,
    *,
    requests: int = 0,
    seed: int | None = None,
) -> dict[str, Any]:
    """One loadgen run: for `duration` seconds, or `requests` requests when given."""
    amount = ["--requests", str(requests)] if requests else ["--duration", str(duration)]
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "loadgen.py"),
            "--url",
            f"http://127.0.0.1:{port}/api/logs",
            "--token",
            "bench-token",
            "--format",
            "jsonl",
            "--batch",
            str(batch),
            "--concurrency",
            str(concurrency),
            *amount,
            "--dup-ratio",
            str(dup_ratio),
            "--engine",
            engine,
            *(["--seed", str(seed)] if seed is not None else []),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def ceiling(kind: str) -> float:
    out_file = Path(tempfile.mkdtemp()) / "storage.jsonl"
    env = os.environ | {"BENCH_PG_DSN": f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"}
    if kind == "postgresql":
        fresh_database(kind, out_file.parent)
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "storage_bench.py"),
            "--methods",
            CEILING[kind],
            "--txn",
            "100",
            "--reps",
            "1",
            "--rows",
            "30000",
            "--out",
            str(out_file),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    return float(json.loads(out_file.read_text().splitlines()[-1])["rows_per_s"])


def run_one(kind: str, batch: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    service = Service(kind, args.workers, env)
    try:
        before = prefill(service, args.prefill)
        concurrency = args.concurrency or (256 if batch == 1 else 16)
        result = loadgen(service.port, batch, concurrency, args.duration, args.dup_ratio, args.engine)
        rss = rss_kib(service.proc.pid)
    finally:
        service.stop()
    stored = count_events(kind, service.url) - before
    raw = ceiling(kind)
    return {
        "database": kind,
        "batch": batch,
        "concurrency": concurrency,
        "events_per_s": result["events_per_s"],
        "requests_per_s": result["requests_per_s"],
        "p50_ms": result["latency_ms"]["p50"],
        "p99_ms": result["latency_ms"]["p99"],
        "non_2xx": result["non_2xx"],
        "errors": result["errors"],
        "ceiling_rows_per_s": raw,
        "ratio": round(result["unique_events_per_s"] / raw, 3),
        "stored": stored,
        "unique_sent": result["unique_events"],
        "stored_equals_unique": stored == result["unique_events"],
        "rss_kib": rss,
        "outbox": bool(env),
        "prefilled": before,
    }


# A log id holds its seed (mod 1,000,000) after its time digits, and the timed runs take loadgen's own
# random seed, 1 to 999,999: the prefill's ids are never theirs. Both runs' ids start from loadgen's
# fixed epoch, so the timed run's ids go in among the prefill's, not after them; its dates come after.
PREFILL_SEED = 0


def prefill(service: Service, events: int) -> int:
    """Store `events` events through the service before the timed run (batch 100, no duplicates), so
    that it runs against a loaded store; returns the count stored."""
    if events:
        loadgen(service.port, 100, 16, 0, 0.0, "raw", requests=-(-events // 100), seed=PREFILL_SEED)
    return count_events(service.kind, service.url) if events else 0


def half_load(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """p99 latency at half the maximum throughput (batch 100), and RSS over `--soak` seconds there."""
    service = Service(kind, args.workers, {})
    try:
        peak = loadgen(service.port, 100, 16, args.duration, args.dup_ratio, args.engine)
        target = peak["events_per_s"] / 2
        best: dict[str, Any] | None = None
        for concurrency in (1, 2, 3, 4, 6, 8):
            probe = loadgen(service.port, 100, concurrency, args.duration, args.dup_ratio, args.engine)
            probe["concurrency"] = concurrency
            if best is None or abs(probe["events_per_s"] - target) < abs(best["events_per_s"] - target):
                best = probe
        assert best is not None
        soak: dict[str, Any] = {}
        if args.soak:
            samples: list[int] = []
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH / "loadgen.py"),
                    "--url",
                    f"http://127.0.0.1:{service.port}/api/logs",
                    "--token",
                    "bench-token",
                    "--batch",
                    "100",
                    "--concurrency",
                    str(best["concurrency"]),
                    "--duration",
                    str(args.soak),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            while proc.poll() is None:
                samples.append(rss_kib(service.proc.pid))
                time.sleep(10)
            out, _ = proc.communicate()
            steady = samples[len(samples) // 10 :]  # after the first tenth: caches and pools warm
            soak = {
                "soak_s": args.soak,
                "rss_first_kib": steady[0],
                "rss_last_kib": steady[-1],
                "rss_min_kib": min(steady),
                "rss_max_kib": max(steady),
                "rss_spread": round((max(steady) - min(steady)) / statistics.median(steady), 3),
                "soak_events_per_s": json.loads(out.strip().splitlines()[-1])["events_per_s"],
            }
    finally:
        service.stop()
    return {
        "database": kind,
        "peak_events_per_s": peak["events_per_s"],
        "half_concurrency": best["concurrency"],
        "half_events_per_s": best["events_per_s"],
        "half_p50_ms": best["latency_ms"]["p50"],
        "half_p99_ms": best["latency_ms"]["p99"],
        **soak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--batches", default="1,10,100")
    parser.add_argument("--runs", type=int, default=3, help="runs per case; the summary gives medians")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=0, help="default: 256 at batch 1, else 16")
    parser.add_argument("--dup-ratio", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--engine", default="raw", choices=["raw", "wrk"])
    parser.add_argument("--outbox", action="store_true", help="also run with a failure-filtered destination")
    parser.add_argument(
        "--prefill", type=int, default=0, help="events stored before each timed run (a loaded store)"
    )
    parser.add_argument("--half-load", action="store_true", help="p99 at half the peak, instead of the table")
    parser.add_argument("--soak", type=float, default=0, help="with --half-load: seconds of RSS sampling")
    args = parser.parse_args()

    if args.half_load:
        for kind in args.databases.split(","):
            print(json.dumps(half_load(kind, args)), flush=True)
        return

    outbox_env = {"FORWARD_URL": "http://127.0.0.1:9/unused", "FORWARD_TYPES": "failure"}
    rows: list[dict[str, Any]] = []
    for kind in args.databases.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for env in [{}, outbox_env] if args.outbox else [{}]:
                for _ in range(args.runs):
                    row = run_one(kind, batch, args, env)
                    print(json.dumps(row), flush=True)
                    rows.append(row)

    if args.prefill:
        print(f"\neach run on a store prefilled with {args.prefill:,} events", end="")
    print("\ndatabase    batch outbox  events/s  req/s   p50ms  p99ms  ceiling/s  ratio  stored==unique")
    keys = sorted({(r["database"], r["batch"], r["outbox"]) for r in rows})
    for kind, batch, outbox in keys:
        group = [r for r in rows if (r["database"], r["batch"], r["outbox"]) == (kind, batch, outbox)]
        med = {
            k: statistics.median(r[k] for r in group)
            for k in ("events_per_s", "requests_per_s", "p50_ms", "p99_ms", "ceiling_rows_per_s", "ratio")
        }
        exact = all(r["stored_equals_unique"] and not r["non_2xx"] for r in group)
        print(
            f"{kind:11s} {batch:5d} {outbox!s:6s} {med['events_per_s']:9.0f} {med['requests_per_s']:6.0f} "
            f"{med['p50_ms']:7.1f} {med['p99_ms']:6.1f} {med['ceiling_rows_per_s']:10.0f} "
            f"{med['ratio']:6.2f}  {exact}"
        )


if __name__ == "__main__":
    main()
