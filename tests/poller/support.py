"""What the poller tests read back from the store, a pause that only records, and `logrelay poll
--once` and `logrelay serve` as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import LogEvent, PollerState
from app.poller.lock import is_pass_running
from tests.conftest import ADMIN_TOKEN, INGEST_TOKEN, READ_TOKEN
from tests.poller.fake_auth0 import CLIENT_ID, CLIENT_SECRET

LOGRELAY = str(Path(sys.executable).parent / "logrelay")


async def stored_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list(await conn.scalars(select(LogEvent.log_id).order_by(LogEvent.log_id)))


async def checkpoint(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(select(PollerState.checkpoint))


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["_id"] for item in items]


@asynccontextmanager
async def failing_write(engine: AsyncEngine, event: str, table: str, condition: str) -> AsyncIterator[None]:
    """A trigger that makes an INSERT or UPDATE on `table` fail where `condition` (on NEW) holds, as a
    full disk or a broken row would."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(
                text(
                    "CREATE FUNCTION fail_write() RETURNS trigger AS $$ BEGIN "
                    f"IF {condition} THEN RAISE EXCEPTION 'simulated store failure'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await conn.execute(
                text(
                    f"CREATE TRIGGER fail_write BEFORE {event} ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION fail_write()"
                )
            )
        else:
            await conn.execute(
                text(
                    f"CREATE TRIGGER fail_write BEFORE {event} ON {table} WHEN {condition} "
                    "BEGIN SELECT RAISE(ABORT, 'simulated store failure'); END"
                )
            )
    try:
        yield
    finally:
        async with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                await conn.execute(text(f"DROP TRIGGER fail_write ON {table}"))
                await conn.execute(text("DROP FUNCTION fail_write()"))
            else:
                await conn.execute(text("DROP TRIGGER fail_write"))


@dataclass
class Pauses:
    """A poller `wait` that records the seconds asked for and returns at once (nothing sleeps), calls
    `then` (what the wait waited for happens), and sets the stop event after `stop_after` pauses."""

    seconds: list[float] = field(default_factory=list)
    stop_after: int | None = None
    then: Callable[[], None] | None = None

    async def __call__(self, stop: asyncio.Event, seconds: float) -> None:
        self.seconds.append(seconds)
        if self.then is not None:
            self.then()
        if self.stop_after is not None and len(self.seconds) >= self.stop_after:
            stop.set()


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1500):  # a bound on waiting, not a timing assertion
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


async def until_no_pass_holds_the_lock(engine: AsyncEngine) -> None:
    """On PostgreSQL a terminated backend lets go of its advisory lock a moment after it is told to."""
    for _ in range(1500):  # a bound on waiting, not a timing assertion
        async with engine.connect() as conn:
            if not await is_pass_running(conn):
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the pass lock was never freed")


def process_env(settings: Settings, cwd: Path) -> dict[str, str]:
    """A logrelay process's settings: the test's database and fake Auth0, and nothing else."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": settings.database_url,
        "DATA_DIR": str(cwd / "cli"),
        "AUTH0_DOMAIN": str(settings.auth0_domain),
        "AUTH0_CLIENT_ID": CLIENT_ID,
        "AUTH0_CLIENT_SECRET": CLIENT_SECRET,
    }


async def start_poll_once(settings: Settings, cwd: Path, **env: str) -> asyncio.subprocess.Process:
    """`logrelay poll --once` against the test's database and fake Auth0, with only these settings."""
    return await asyncio.create_subprocess_exec(
        LOGRELAY,
        "poll",
        "--once",
        env=process_env(settings, cwd) | env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_poll_once(settings: Settings, cwd: Path, **env: str) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of one `logrelay poll --once` run to its end."""
    process = await start_poll_once(settings, cwd, **env)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out, err


@asynccontextmanager
async def serving(
    settings: Settings, cwd: Path, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`logrelay serve` as a real process (its own signal handling, uvicorn's shutdown) on a free
    port, ready: (the process, its base URL). Killed at the end if it is still running."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tokens = {"LOG_STREAM_TOKEN": INGEST_TOKEN, "API_TOKEN": READ_TOKEN, "ADMIN_TOKEN": ADMIN_TOKEN}
    values = process_env(settings, cwd) | tokens | {"HOST": "127.0.0.1", "PORT": str(port)}
    with (cwd / f"serve-{port}.log").open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            LOGRELAY, "serve", env=values | env, cwd=cwd, stdout=output, stderr=output
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
            for _ in range(600):  # a bound on waiting, not a timing assertion
                assert process.returncode is None, (cwd / f"serve-{port}.log").read_text()
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("logrelay serve did not become ready")
        yield process, base_url
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
