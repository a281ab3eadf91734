"""One large body: the peak RSS of `logrelay serve` while it stores it, and the time to answer.

    python tests/bench/body_bench.py --framings jsonl,array [--database-url postgresql://...]

    python tests/bench/body_bench.py --framings bad,bad+1   # lines that are not JSON

For each framing it starts `logrelay serve` (one process, workers off) on a fresh database, POSTs one
body of minimal events (`{"log_id":"<unique>"}`) just under MAX_BODY_BYTES, and prints one JSON line:
the answer's counts, seconds to the answer, the server's RSS before the request and its peak (VmHWM),
and the events stored. On PostgreSQL the database given is emptied (its public schema dropped) first.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_bench import free_port

TOKEN = "bench-token"
MAX_BODY_BYTES = 16 * 1024 * 1024


def make_body(framing: str, limit: int = MAX_BODY_BYTES) -> tuple[bytes, int]:
    """Minimal events with unique ids, as many as fit in `limit` bytes; or, for `bad`, lines that are
    not JSON (`x`) filling `limit`, and for `bad+1` the same and one event at the end."""
    if framing.startswith("bad"):
        event = b'{"log_id":"the-one"}\n' if framing == "bad+1" else b""
        return b"x\n" * ((limit - len(event)) // 2) + event, int(bool(event))
    items: list[bytes] = []
    size = 2
    while True:
        item = b'{"log_id":"%x"}' % len(items)
        if size + len(item) + 1 > limit:
            break
        items.append(item)
        size += len(item) + 1
    if framing == "jsonl":
        return b"\n".join(items) + b"\n", len(items)
    return b"[" + b",".join(items) + b"]", len(items)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def count_events(url: str) -> int:
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.split("///", 1)[1]) as conn:
            return int(conn.execute("SELECT count(*) FROM log_events").fetchone()[0])
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM log_events").fetchone()
        return int(row[0]) if row else 0


def run_one(framing: str, database_url: str | None, body_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="logrelay-body-"))
    url = database_url or f"sqlite:///{workdir / 'bench.db'}"
    env = os.environ | {
        "DATABASE_URL": url,
        "DATA_DIR": str(workdir / "data"),
        "LOG_STREAM_TOKEN": TOKEN,
        "RUN_WORKERS": "false",
        "SERVICE_LOG_LEVEL": "warning",
    }
    logrelay = str(Path(sys.executable).with_name("logrelay"))
    if not url.startswith("sqlite"):
        reset_postgres(url)
        subprocess.run([logrelay, "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(
        [logrelay, "serve", "--port", str(port)],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        body, events = make_body(framing, body_bytes)
        rss_before = status_kib(proc.pid, "VmRSS")
        started = time.perf_counter()
        response = httpx.post(base + "/api/logs", content=body, headers={"Authorization": TOKEN}, timeout=900)
        seconds = time.perf_counter() - started
        peak = status_kib(proc.pid, "VmHWM")
        rss_after = status_kib(proc.pid, "VmRSS")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    answer = response.json()
    return {
        "database": "sqlite" if url.startswith("sqlite") else "postgresql",
        "framing": framing,
        "body_bytes": len(body),
        "events": events,
        "status": response.status_code,
        "answer": {k: v for k, v in answer.items() if k != "errors"},
        "answer_bytes": len(response.content),
        "seconds": round(seconds, 2),
        "rss_before_kib": rss_before,
        "peak_rss_kib": peak,
        "rss_after_kib": rss_after,
        "stored": count_events(url),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--framings", default="jsonl,array")
    parser.add_argument("--database-url", help="postgresql://...; default: a fresh SQLite file")
    parser.add_argument(
        "--body-bytes", type=int, default=MAX_BODY_BYTES, help="the body's size, at most the default"
    )
    args = parser.parse_args()
    for framing in args.framings.split(","):
        print(json.dumps(run_one(framing, args.database_url, args.body_bytes)), flush=True)


if __name__ == "__main__":
    main()
