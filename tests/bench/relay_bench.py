"""Relay benchmark: delivered events per second to a local receiver, in batch and single modes.

    python tests/bench/relay_bench.py --events 20000 --database-url sqlite:///tmp/relay-bench.db
    python tests/bench/relay_bench.py --database-url postgresql://postgres@127.0.0.1:5432/test_relay

Stores the events first (not timed), then runs the real delivery loop (claim, POST, record) against
a receiver in its own process, until every outbox row is delivered. The database is wiped first.
The last line is the HTTP stack's own ceiling (bare httpx POSTs to the same receiver), which bounds
single mode. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.config import Settings  # noqa: E402
from app.context import open_context  # noqa: E402
from app.db import Base  # noqa: E402
from app.delivery import run_delivery_loop  # noqa: E402
from app.destinations import DestinationCreate, create_destination  # noqa: E402
from app.ingest import Batch, store_batches, to_rows  # noqa: E402
from app.models import OutboxItem  # noqa: E402
from tests.factories import make_event  # noqa: E402


async def receiver_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the body, answer 200: the cheapest honest webhook receiver."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_receiver(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "tests.bench.relay_bench:receiver_app"),
            *("--port", str(port), "--log-level", "warning", "--no-access-log", "--lifespan", "off"),
        ],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/", content=b"[]")
            return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the receiver did not start")


async def run(settings: Settings, url: str, events: int, mode: dict[str, Any]) -> dict[str, Any]:
    async with open_context(settings) as context:
        async with context.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
                await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            else:
                for table in reversed(Base.metadata.sorted_tables):
                    await conn.execute(table.delete())
            await create_destination(conn, DestinationCreate(name="bench", url=url, **mode))
        now = datetime.now(UTC)
        for start in range(0, events, 1000):
            rows, rejected = to_rows(_stream_events(min(1000, events - start)), "stream", now)
            async with context.engine.begin() as conn:
                await conn.run_sync(store_batches, [Batch(rows, rejected, "stream", now)])

        stop = asyncio.Event()
        began = time.perf_counter()
        loop = asyncio.create_task(run_delivery_loop(context, stop))
        while True:
            async with context.engine.connect() as conn:
                delivered = await conn.scalar(
                    select(func.count()).select_from(OutboxItem).where(OutboxItem.status == "delivered")
                )
            if delivered == events:
                break
            if loop.done():
                loop.result()
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - began
        stop.set()
        await loop
    return {"events": events, "seconds": round(elapsed, 3), "events_per_s": round(events / elapsed)}


async def raw_ceiling(url: str, requests: int, concurrency: int) -> int:
    """Bare httpx POSTs of one small event to the same receiver: the HTTP stack's own ceiling."""
    body = orjson.dumps(make_event())
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient() as client:

        async def post() -> None:
            async with slots:
                await client.post(url, content=body, headers={"Content-Type": "application/json"})

        began = time.perf_counter()
        await asyncio.gather(*(post() for _ in range(requests)))
        return round(requests / (time.perf_counter() - began))


def _stream_events(n: int) -> list[Any]:
    from app.auth0.stream.event import StreamEvent

    return [StreamEvent(e["log_id"], e, False) for e in (make_event() for _ in range(n))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--single-events", type=int, default=5000, help="events in single mode")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--concurrent-calls", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    settings = Settings(
        _env_file=None,
        database_url=args.database_url or f"sqlite:///{workdir / 'bench.db'}",
        data_dir=workdir / "data",
        admin_token="bench",
        api_token="bench",
        log_stream_token="bench",
        delivery_poll_interval=0.05,
    )
    migrate.upgrade(settings)
    port = free_port()
    receiver = start_receiver(port)
    url = f"http://127.0.0.1:{port}/hook"
    calls = args.concurrent_calls
    modes = [
        ("batch", args.events, {"send_as_batch": True, "batch_size": 100, "concurrent_calls": calls}),
        ("single", args.single_events, {"send_as_batch": False, "concurrent_calls": calls}),
    ]
    try:
        database = "postgresql" if "postgresql" in settings.database_url else "sqlite"
        print(f"database={database} concurrent_calls={calls}")
        for name, events, mode in modes:
            result = asyncio.run(run(settings, url, events, mode))
            events_per_s, seconds = result["events_per_s"], result["seconds"]
            print(f"{name:6} {result['events']:>7} events in {seconds:>7}s = {events_per_s:>7} events/s")
        ceiling = asyncio.run(raw_ceiling(url, 2000, calls))
        print(f"raw    httpx POSTs, {calls} at a time, no database = {ceiling:>7} requests/s")
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()
