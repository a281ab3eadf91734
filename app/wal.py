"""Background WAL checkpoints for SQLite.

Random-key index inserts dirty many pages per commit, so SQLite's automatic checkpoint (copying the
WAL back into the database and syncing it) would otherwise run inside an ingest commit every few
hundred rows. A PASSIVE checkpoint on its own connection does that work beside the writer instead.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from app.stopping import wait_or_stop

log = logging.getLogger(__name__)
INTERVAL_SECONDS = 1.0


async def run_checkpoints(engine: AsyncEngine, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await wait_or_stop(stop, INTERVAL_SECONDS)
        try:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:  # a busy or failed checkpoint is retried on the next tick
            log.warning("WAL checkpoint failed", exc_info=True)
