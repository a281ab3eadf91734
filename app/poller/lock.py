"""The one-pass-at-a-time lock: PostgreSQL's advisory lock, or a lease in the poller_state row on
SQLite. Unlike the other tables' functions it needs its own connection (PostgreSQL) or its own short
transactions (SQLite)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.models import PollerState
from app.poller.lease import ADVISORY_KEY, HELD, KEY, Lease
from app.poller.owners import holder_is_gone, local_pid, new_lease_owner
from app.poller.state import STATE, ensure_state

log = logging.getLogger(__name__)


@asynccontextmanager
async def hold_pass_lock(engine: AsyncEngine, lease_seconds: float) -> AsyncIterator[Lease | None]:
    """Yield a Lease while this process is the only one polling, or None when another pass holds it.

    PostgreSQL: pg_try_advisory_lock on a dedicated autocommit connection, held for the pass and
    released when it ends or the connection dies. SQLite: a lease row that expires after
    `lease_seconds`, renewed by every page; a holder that died on this host (SIGKILL, a crash) is
    taken over at once, one whose death cannot be seen blocks polling at most that long.
    """
    async with engine.begin() as conn:
        await ensure_state(conn)
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            if not await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}):
                yield None
                return
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            try:
                yield Lease(None, lease_seconds, pid)
            finally:
                # A broken connection has dropped the lock already.
                with contextlib.suppress(Exception):
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
        return
    owner = new_lease_owner()
    if not await _take_lease(engine, owner, lease_seconds):
        yield None
        return
    try:
        yield Lease(owner, lease_seconds)
    finally:
        async with engine.begin() as conn:
            await conn.execute(
                update(PollerState)
                .where(PollerState.name == STATE, PollerState.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )


async def _take_lease(engine: AsyncEngine, owner: str, lease_seconds: float) -> bool:
    """Take the SQLite lease when it is free or expired, or at once when its holder has died."""
    now = datetime.now(UTC)
    until = now + timedelta(seconds=lease_seconds)
    free = or_(PollerState.lease_until.is_(None), PollerState.lease_until < now)
    if await _set_lease(engine, free, owner, until):
        return True
    async with engine.connect() as conn:
        holder = await conn.scalar(select(PollerState.lease_owner).where(PollerState.name == STATE))
    if holder is None or not holder_is_gone(holder):
        return False
    # Only that dead holder's lease: if another process took it over meanwhile, that one keeps it.
    if not await _set_lease(engine, PollerState.lease_owner == holder, owner, until):
        return False
    log.warning(
        "took over the poller lease of a process that no longer exists", extra={"pid": local_pid(holder)}
    )
    return True


async def _set_lease(
    engine: AsyncEngine, condition: ColumnElement[bool], owner: str, until: datetime
) -> bool:
    async with engine.begin() as conn:
        taken = await conn.execute(
            update(PollerState)
            .where(PollerState.name == STATE, condition)
            .values(lease_owner=owner, lease_until=until)
        )
    return taken.rowcount == 1


async def is_pass_running(conn: AsyncConnection) -> bool:
    """Whether some process holds the pass lock now (the advisory lock, or an unexpired lease whose
    holder is not known to be gone)."""
    if conn.dialect.name == "postgresql":
        return bool(await conn.scalar(text(HELD.format(holder="")), KEY))
    lease = (
        await conn.execute(
            select(PollerState.lease_owner, PollerState.lease_until).where(PollerState.name == STATE)
        )
    ).first()
    if lease is None or lease.lease_until is None or lease.lease_until <= datetime.now(UTC):
        return False
    return lease.lease_owner is None or not holder_is_gone(lease.lease_owner)
