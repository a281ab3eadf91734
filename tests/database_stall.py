"""A database that stalls the server's reads of some tables: the first statement that reads each one
waits before it runs, as behind a lock held too long or on a slow disk.

PostgreSQL: a lock of the test's own. Another connection holds an ACCESS EXCLUSIVE lock on each table,
and lets it go `seconds` after one of the server's statements began to wait for it, or at the block's
end. SQLite readers in WAL mode wait for no writer, and no lock can be taken that stalls them while
the server holds the file open; so the server's own connections stop, in SQLite's statement trace,
at the start of the first statement that names each table, for `seconds` or until the block's end.
That statement then runs in SQLite as it would after any stall: an interrupt that came meanwhile
stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_

WAITERS = text("SELECT count(*) FROM pg_locks WHERE relation = CAST(:table AS regclass) AND NOT granted")


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
