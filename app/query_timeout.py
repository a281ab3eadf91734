"""QUERY_TIMEOUT: the longest one read of the query API may run, enforced inside the database.

Giving up on the await instead (asyncio.timeout) would free neither the database nor the pooled
connection: the statement would run on for nobody. So PostgreSQL stops it itself, at a
`statement_timeout` set for the read's own transaction, which ends with the read and so never
reaches ingest, the relay or the poller on the same pooled connection. SQLite, which has no such
setting, is stopped by sqlite3_interrupt(), safe to call from the event loop while the driver's
thread runs the statement; it ends at SQLite's next check, between steps of the statement's
program. A read opens no SQLite transaction, so none is left half done, and an interrupt that comes
after the statement has ended does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import QueryTimeout
from app.metrics import QUERY_TIMEOUTS

log = logging.getLogger(__name__)

# SQLSTATE 57014, query_canceled: statement_timeout, which only a limited read sets, or a cancel
# request. db.is_unavailable reads its class, 57, as "the database is unavailable".
QUERY_CANCELED = "57014"
_SET_STATEMENT_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")


@asynccontextmanager
async def limit(conn: AsyncConnection, seconds: float | None) -> AsyncIterator[None]:
    """Stop what the block runs on `conn` once `seconds` have passed, with QueryTimeout; no limit
    when `seconds` is None."""
    if seconds is None:
        yield
    elif conn.dialect.name == "postgresql":
        # Whole milliseconds, at least 1: PostgreSQL would round a smaller value to 0, no limit.
        await conn.execute(_SET_STATEMENT_TIMEOUT, {"ms": str(max(1, math.ceil(seconds * 1000)))})
        try:
            yield
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != QUERY_CANCELED:
                raise
            raise _timed_out(seconds) from exc
    else:
        driver = (await conn.get_raw_connection()).driver_connection
        timer = asyncio.create_task(_interrupt_after(driver, seconds))
        try:
            yield
        except DBAPIError as exc:
            if not (timer.done() and str(exc.orig) == "interrupted"):
                raise
            raise _timed_out(seconds) from exc
        finally:
            # Before the connection goes back to the pool: no interrupt may reach its next user.
            timer.cancel()


async def _interrupt_after(driver: Any, seconds: float) -> None:
    await asyncio.sleep(seconds)
    with contextlib.suppress(ValueError, sqlite3.ProgrammingError):  # the connection was closed meanwhile
        await driver.interrupt()  # aiosqlite calls sqlite3's interrupt() here, not on its thread


def _timed_out(seconds: float) -> QueryTimeout:
    QUERY_TIMEOUTS.inc()
    log.warning("a query API read ran past QUERY_TIMEOUT (%g s) and was stopped", seconds)
    return QueryTimeout(
        f"the query ran longer than QUERY_TIMEOUT ({seconds:g} s) and was stopped; narrow it: a "
        "shorter since/until range, or an exact filter such as user_id, user_name or ip"
    )
