"""A database that stalls the server's reads of some tables: the first statement that reads each one
waits before it runs, as behind a lock held too long or on a slow disk.

PostgreSQL: a lock of the test's own. Another connection holds an ACCESS EXCLUSIVE lock on each table,
and lets it go `seconds` after one of the server's statements began to wait for it, or at the block's
end. SQLite readers in WAL mode wait for no writer, and no lock can be taken that stalls them while
the server holds the file open; so the server's own connections stop, in SQLite's statement trace,
at the start of the first statement that names each table, for `seconds` or until the block's end.
That statement then runs in SQLite as it would after any stall: an interrupt that came meanwhile
stops it.

`write_lock` stalls the server's writes instead: the test holds log_events' write lock for a block.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_

from app.config import Settings
from app.db import sqlite_path

WAITERS = text("SELECT count(*) FROM pg_locks WHERE relation = CAST(:table AS regclass) AND NOT granted")


@contextlib.asynccontextmanager
async def write_lock(engine: AsyncEngine, settings: Settings) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Another connection holds the write lock on log_events for the block: inserts wait for it.

    Yields a wait that returns once an insert is queued behind the lock. PostgreSQL shows it in
    pg_locks; SQLite's waiters cannot be seen, so there it returns after a second, ample for a request
    on an idle server to be read and its commit begun."""
    if settings.is_sqlite:
        path = sqlite_path(settings)
        assert path is not None

        async def after_a_second() -> None:
            await asyncio.sleep(1)

        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            yield after_a_second
            conn.execute("ROLLBACK")
        return
    async with engine.begin() as conn:
        await conn.execute(text("LOCK TABLE log_events IN SHARE ROW EXCLUSIVE MODE"))

        async def queued() -> None:
            deadline = time.monotonic() + 10
            while not await conn.scalar(WAITERS, {"table": "log_events"}):
                assert time.monotonic() < deadline, "no insert queued behind the lock"
                await asyncio.sleep(0.05)

        yield queued


@contextlib.asynccontextmanager
async def stalled(
    server: AsyncEngine, engine: AsyncEngine, seconds: float, *tables: str
) -> AsyncIterator[list[str]]:
    """Stall the first read of each of `tables` on `server` (the app's engine) for `seconds`, or until
    the block ends; `engine` is the test's own. Yields the tables whose first read has been stalled,
    in order, as each stall begins."""
    held: list[str] = []
    if server.dialect.name == "postgresql":
        async with _locked(engine, seconds, tables, held):
            yield held
    else:
        with _traced(server, seconds, tables, held):
            yield held


@contextlib.asynccontextmanager
async def _locked(
    engine: AsyncEngine, seconds: float, tables: tuple[str, ...], held: list[str]
) -> AsyncIterator[None]:
    release = asyncio.Event()
    locked = [asyncio.Event() for _ in tables]
    holders = [
        asyncio.create_task(_hold(engine, table, seconds, done, release, held))
        for table, done in zip(tables, locked, strict=True)
    ]
    try:
        await asyncio.gather(*(done.wait() for done in locked))
        yield
    finally:
        release.set()
        await asyncio.gather(*holders)


async def _hold(
    engine: AsyncEngine,
    table: str,
    seconds: float,
    locked: asyncio.Event,
    release: asyncio.Event,
    held: list[str],
) -> None:
    async with engine.connect() as conn:
        await conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        locked.set()
        ends = asyncio.create_task(release.wait())
        try:
            while not ends.done():
                async with engine.connect() as watcher:
                    waiting = await watcher.scalar(WAITERS, {"table": table})
                if waiting:
                    held.append(table)
                    await asyncio.wait([ends], timeout=seconds)
                    break
                await asyncio.wait([ends], timeout=0.01)
        finally:
            ends.cancel()
        await conn.rollback()


@contextlib.contextmanager
def _traced(server: AsyncEngine, seconds: float, tables: tuple[str, ...], held: list[str]) -> Iterator[None]:
    release = threading.Event()
    guard = threading.Lock()
    patterns = {table: re.compile(rf"\b{table}\b") for table in tables}

    def trace(sql: str) -> None:  # on the driver's thread, at the start of each statement
        if release.is_set():
            return
        with guard:
            table = next((t for t, p in patterns.items() if t not in held and p.search(sql)), None)
            if table is not None:
                held.append(table)
        if table is not None:
            release.wait(seconds)

    def install(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        await_(dbapi_connection.driver_connection.set_trace_callback(trace))

    event.listen(server.sync_engine, "checkout", install)
    try:
        yield
    finally:
        release.set()
        event.remove(server.sync_engine, "checkout", install)
