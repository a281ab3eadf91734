"""Housekeeping: dropping what is kept no longer, every PURGE_EVERY seconds in every worker process
(`serve` unless RUN_WORKERS=false, and `worker`): delivered outbox rows past DELIVERY_KEEP_DELIVERED, signing
secrets past their grace, and events and quarantined lines past EVENT_RETENTION.

A loop of its own, beside the delivery loop: the first purge after EVENT_RETENTION is set on a large
store runs for minutes, and deliveries (and new destinations) need not wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from app import outbox, retention
from app.context import Context
from app.destinations import forget_expired_secrets
from app.stopping import wait_or_stop

log = logging.getLogger(__name__)

PURGE_EVERY = 600.0  # seconds between purges
PURGE_CHUNK = 5000  # delivered outbox rows per transaction


async def run_housekeeping_loop(context: Context, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await housekeep_once(context, stop)
        except Exception:
            log.exception("housekeeping failed")
        await wait_or_stop(stop, PURGE_EVERY)


async def housekeep_once(context: Context, stop: asyncio.Event | None = None) -> None:
    now = datetime.now(UTC)  # this host's clock: what is purged is compared with no other worker's
    await purge_delivered(context)
    async with context.engine.begin() as conn:
        await forget_expired_secrets(conn, now)
    await retention.purge_expired(context, now, stop)


async def purge_delivered(context: Context) -> int:
    """Drop rows delivered longer ago than DELIVERY_KEEP_DELIVERED, a chunk per short transaction."""
    before = datetime.now(UTC) - context.settings.delivery_keep_delivered
    total = 0
    while True:
        async with context.engine.begin() as conn:
            purged = await outbox.purge_delivered(conn, before, PURGE_CHUNK)
        total += purged
        if purged < PURGE_CHUNK:
            return total
