"""QUERY_TIMEOUT: the longest one read may run, all its statements together, enforced inside the
database. It bounds the reads of the query API, of the admin API (destinations, deliveries, the
poller's state) and of /metrics; each `reader` is counted and worded apart.

Giving up on the await instead (asyncio.timeout) would free neither the database nor the pooled
connection: the statement would run on for nobody. So a read has one deadline, checked before each of
its statements: one begun with no time left is not run. PostgreSQL is given the time left as the
`statement_timeout` of the read's own transaction, which ends with the read and so never reaches
ingest, the relay or the poller on the same pooled connection, and stops the statement itself.
SQLite, which has no such setting, is stopped by sqlite3_interrupt() at the deadline, safe to call
from the event loop while the driver's thread runs the statement; it ends at SQLite's next check,
between steps of the statement's program. A read opens no SQLite transaction, so none is left half
done, and an interrupt that comes between statements does nothing: the check before the next one
stops the read. An SQLite wait for a lock is not cut short (busy_timeout, 30 s), but a reader in WAL
mode waits for no writer: only for a connection in exclusive locking mode, which cannot begin while
logrelay holds the file open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import QueryTimeout, Unavailable
from app.metrics import QUERY_TIMEOUTS

log = logging.getLogger(__name__)

Reader = Literal["query", "admin", "metrics"]

# SQLSTATE 57014, query_canceled: statement_timeout, which only a limited read sets, or a cancel
# request. db.is_unavailable reads its class, 57, as "the database is unavailable".
QUERY_CANCELED = "57014"
_SET_STATEMENT_TIMEOUT = "SELECT set_config('statement_timeout', $1, true)"  # SET LOCAL, bound
_NAMES: dict[Reader, str] = {"query": "a query API", "admin": "an admin API", "metrics": "a /metrics"}
# What a client should do about a 504, by reader.
_ADVICE: dict[Reader, str] = {
    "query": "narrow it: a shorter since/until range, or an exact filter such as user_id, user_name or ip",
    "admin": "the database is slow or a lock holds these rows; retry later",
    "metrics": "the database is slow or a lock holds these rows",
}


@asynccontextmanager
async def reading(
    engine: AsyncEngine, reader: Reader, seconds: float | None
) -> AsyncIterator[AsyncConnection]:
    """A connection for one read, which the database stops once `seconds` (QUERY_TIMEOUT) have passed
    since the read began, however many statements it runs: QueryTimeout, a 504. No limit when
    `seconds` is None. PostgreSQL plans it for its actual values: see app.db.

    The wait for a pooled connection counts too: with every connection taken by other reads, the pool
    would otherwise wait its own 30 s first. No connection free in time is Unavailable (a 503, as when
    the pool gives up by itself), and the read then has what is left of `seconds`."""
    if seconds is None:
        async with engine.connect() as conn:
            yield conn
        return
    begun = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            conn = await engine.connect()
    except TimeoutError:
        log.warning("%s read got no database connection within QUERY_TIMEOUT (%g s)", _NAMES[reader], seconds)
        raise Unavailable(
            f"no database connection came free within QUERY_TIMEOUT ({seconds:g} s): each is busy with "
            "another read; retry"
        ) from None
    read = _Read(reader, seconds, conn.dialect.name == "postgresql", begun + seconds)
    try:
        async with _limit(conn, read):
            yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def _limit(conn: AsyncConnection, read: _Read) -> AsyncIterator[None]:
    """Stop what the block runs on `conn` at the read's deadline, with QueryTimeout."""
    sync_conn = conn.sync_connection
    assert sync_conn is not None
    event.listen(sync_conn, "before_cursor_execute", read.before_statement)
    timer = None
    if not read.postgres:
        driver = (await conn.get_raw_connection()).driver_connection
        timer = asyncio.create_task(_interrupt_after(driver, read.deadline - time.monotonic()))
    try:
        yield
    except DBAPIError as exc:
        if not read.stopped(exc, timer):
            raise
        raise read.timed_out() from exc
    finally:
        # Before the connection goes back to the pool: no interrupt may reach its next user.
        if timer is not None:
            timer.cancel()
        event.remove(sync_conn, "before_cursor_execute", read.before_statement)


class _Read:
    """One limited read: its deadline, and what each of its statements is given of it."""

    def __init__(self, reader: Reader, seconds: float, postgres: bool, deadline: float) -> None:
        self.reader = reader
        self.seconds = seconds
        self.postgres = postgres
        self.deadline = deadline  # time.monotonic()

    def before_statement(
        self, conn: Connection, _cursor: Any, _sql: str, _params: Any, _context: Any, _many: bool
    ) -> None:
        """Give the statement about to run the time left; none left, and it does not run."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out()
        if not self.postgres:
            return
        # A cursor of its own (the statement's may be a server-side one), run in the statement's
        # greenlet, before it. Whole milliseconds, at least 1: PostgreSQL would take 0 for no limit.
        cursor = conn.connection.cursor()
        try:
            cursor.execute(_SET_STATEMENT_TIMEOUT, (str(max(1, math.ceil(left * 1000))),))
        finally:
            cursor.close()

    def stopped(self, exc: DBAPIError, timer: asyncio.Task[None] | None) -> bool:
        """Whether the database stopped the statement for this read's limit."""
        if self.postgres:
            return getattr(exc.orig, "sqlstate", None) == QUERY_CANCELED
        return str(exc.orig) == "interrupted" and timer is not None and timer.done()

    def timed_out(self) -> QueryTimeout:
        QUERY_TIMEOUTS.labels(self.reader).inc()
        log.warning(
            "%s read ran past QUERY_TIMEOUT (%g s) and was stopped", _NAMES[self.reader], self.seconds
        )
        return QueryTimeout(
            f"the {'query' if self.reader == 'query' else 'read'} ran longer than QUERY_TIMEOUT "
            f"({self.seconds:g} s) and was stopped; {_ADVICE[self.reader]}"
        )


async def _interrupt_after(driver: Any, seconds: float) -> None:
    await asyncio.sleep(seconds)
    with contextlib.suppress(ValueError, sqlite3.ProgrammingError):  # the connection was closed meanwhile
        await driver.interrupt()  # aiosqlite calls sqlite3's interrupt() here, not on its thread
