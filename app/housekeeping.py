"""Housekeeping: dropping what is kept no longer, every PURGE_EVERY seconds in every worker process
(`serve` unless RUN_WORKERS=false, and `worker`): delivered outbox rows past DELIVERY_KEEP_DELIVERED, signing
secrets past their grace, and events and quarantined lines past EVENT_RETENTION.

A loop of its own, beside the delivery loop: the first purge after EVENT_RETENTION is set on a large
store runs for minutes, and deliveries (and new destinations) need not wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from app import outbox, retention
from app.context import Context
from app.destinations import forget_expired_secrets
from app.stopping import wait_or_stop

log = logging.getLogger(__name__)

PURGE_EVERY = 600.0  # seconds between purges
PACE = retention.Pace()  # delivered outbox rows go at the pace events do


async def run_housekeeping_loop(context: Context, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await housekeep_once(context, stop)  # logs what fails, step by step
        await wait_or_stop(stop, PURGE_EVERY)


async def housekeep_once(context: Context, stop: asyncio.Event | None = None) -> None:
    """Each purge on its own: one that fails is logged and the others still run, so that a broken
    purge of delivered rows, say, does not keep events past EVENT_RETENTION as well."""
    now = datetime.now(UTC)  # this host's clock: what is purged is compared with no other worker's

    async def forget_secrets() -> None:
        async with context.engine.begin() as conn:
            await forget_expired_secrets(conn, now)

    steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("delivered outbox rows", lambda: purge_delivered(context, stop)),
        ("expired signing secrets", forget_secrets),
        ("events past the retention", lambda: retention.purge_expired(context, now, stop)),
    ]
    for step, purge in steps:
        try:
            await purge()
        except Exception:
            log.exception("housekeeping failed", extra={"step": step})


async def purge_delivered(
    context: Context, stop: asyncio.Event | None = None, pace: retention.Pace = PACE
) -> int:
    """Drop rows delivered longer ago than DELIVERY_KEEP_DELIVERED, a chunk per short transaction
    with the retention's pause between chunks, so that ingest's commits get in between (SQLite)."""
    before = datetime.now(UTC) - context.settings.delivery_keep_delivered

    async def chunk(conn: AsyncConnection, limit: int) -> int:
        return await outbox.purge_delivered(conn, before, limit)

    return await retention.purge_in_chunks(context.engine, chunk, stop or asyncio.Event(), pace)
