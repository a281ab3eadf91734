"""The poller's tables: the checkpoint row (poller_state), the one-pass-at-a-time lock, and the run
history (poller_runs). Functions take a connection and never commit, except the lock, which needs
its own connection (PostgreSQL) or its own short transactions (SQLite)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, Update, delete, false, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.auth0.management import Token, TokenCache, date_of_log_id
from app.models import LogEvent, PollerRun, PollerState

log = logging.getLogger(__name__)

STATE = "default"
# pg_try_advisory_lock key: "logrelay" as a 64-bit number.
ADVISORY_KEY = int.from_bytes(b"logrelay", "big")
# Run history: the last day always stays (the daily report reads it); older runs go once they are
# older than LOG_RETENTION_DAYS or beyond the newest KEEP_RUNS.
KEEP_RUNS = 1000
# The advisory lock as pg_locks shows it (a bigint key as classid, the high 32 bits, and objid), in
# this database only: another database on the server may run a logrelay of its own.
_HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()){holder})"
)
_KEY = {"high": ADVISORY_KEY >> 32, "low": ADVISORY_KEY & 0xFFFFFFFF}


# What a run the next pass found still open says: its process ended without closing it.
ABANDONED = (
    "interrupted: the poll process stopped before the pass finished (killed, or it crashed); what it "
    "stored is kept, and the next pass went on from the checkpoint"
)


class LeaseLost(Exception):
    """Another pass took the SQLite lease (this one overran it); its page is rolled back."""


@dataclass(slots=True)
class State:
    checkpoint: str | None
    start_from: str | None
    last_report_at: datetime | None
    resume_at: datetime | None = None


@dataclass(slots=True)
class Lease:
    """Proof that this pass may move the checkpoint. `owner` fences writes on SQLite; on PostgreSQL
    the advisory lock is held by the backend `pid` (owner None), and each write checks it still is."""

    owner: str | None
    seconds: float
    pid: int | None = None


async def ensure_state(conn: AsyncConnection) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(PollerState).values(name=STATE, updated_at=datetime.now(UTC))
    await conn.execute(statement.on_conflict_do_nothing(index_elements=["name"]))


async def load_state(conn: AsyncConnection) -> State:
    columns = (
        PollerState.checkpoint,
        PollerState.start_from,
        PollerState.last_report_at,
        PollerState.resume_at,
    )
    row = (await conn.execute(select(*columns).where(PollerState.name == STATE))).first()
    return State(*row) if row else State(None, None, None)


async def save_checkpoint(
    conn: AsyncConnection, lease: Lease, checkpoint: str | None, start_from: str | None
) -> None:
    """Move the checkpoint in the caller's (storing) transaction; LeaseLost if the lease is gone."""
    now = datetime.now(UTC)
    values: dict[str, object] = {"checkpoint": checkpoint, "start_from": start_from, "updated_at": now}
    statement = update(PollerState).where(PollerState.name == STATE)
    if lease.owner is not None:
        statement = statement.where(PollerState.lease_owner == lease.owner)
        values["lease_until"] = now + timedelta(seconds=lease.seconds)
    if lease.pid is not None:
        # The lock's connection may have dropped (an idle timeout, a proxy), and another pass taken it.
        held = await conn.scalar(text(_HELD.format(holder=" AND pid = :pid")), _KEY | {"pid": lease.pid})
        if not held:
            raise LeaseLost("this pass lost its advisory lock; this page was not stored")
    result = await conn.execute(statement.values(**values))
    if result.rowcount != 1:
        raise LeaseLost("another poller pass took over the lease; this page was not stored")


async def checkpoint_date(conn: AsyncConnection, checkpoint: str | None) -> datetime | None:
    """When the checkpoint's log was written: from the id itself, else from the stored event."""
    if checkpoint is None:
        return None
    if at := date_of_log_id(checkpoint):
        return at
    stored: datetime | None = await conn.scalar(select(LogEvent.date).where(LogEvent.log_id == checkpoint))
    return stored


async def set_resume_at(conn: AsyncConnection, at: datetime | None) -> None:
    """When the next pass may start (a rate limit ended this one), or None: at once."""
    await conn.execute(update(PollerState).where(PollerState.name == STATE).values(resume_at=at))


async def mark_reported(conn: AsyncConnection, at: datetime) -> None:
    await conn.execute(update(PollerState).where(PollerState.name == STATE).values(last_report_at=at))


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
    if holder is None or not _holder_is_gone(holder):
        return False
    # Only that dead holder's lease: if another process took it over meanwhile, that one keeps it.
    if not await _set_lease(engine, PollerState.lease_owner == holder, owner, until):
        return False
    log.warning(
        "took over the poller lease of a process that no longer exists", extra={"pid": _local_pid(holder)}
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


@functools.cache
def host_id() -> str:
    """This host, as far as pids go: the hostname and the pid namespace (a container sharing the
    database file sees other pids), as a digest short enough for lease_owner."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{namespace}".encode()).hexdigest()[:16]


def new_lease_owner() -> str:
    """`token:pid:host`: the random token fences writes; the pid and host let another process on
    this host see that the holder is gone (SQLite files are shared on one host only)."""
    return f"{uuid.uuid4().hex}:{os.getpid()}:{host_id()}"


def _local_pid(owner: str) -> int | None:
    """The holder's pid when the owner names a process on this host; None for an owner in the old
    format (a bare token) or from another host, which count as alive until the lease expires."""
    parts = owner.split(":")
    if len(parts) != 3 or parts[2] != host_id() or not parts[1].isascii() or not parts[1].isdigit():
        return None
    return int(parts[1])


def _holder_is_gone(owner: str) -> bool:
    """True only when the owner is a process on this host that no longer exists."""
    pid = _local_pid(owner)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process exists; no such pid can
        return False
    return False


async def is_pass_running(conn: AsyncConnection) -> bool:
    """Whether some process holds the pass lock now (the advisory lock, or an unexpired lease whose
    holder is not known to be gone)."""
    if conn.dialect.name == "postgresql":
        return bool(await conn.scalar(text(_HELD.format(holder="")), _KEY))
    lease = (
        await conn.execute(
            select(PollerState.lease_owner, PollerState.lease_until).where(PollerState.name == STATE)
        )
    ).first()
    if lease is None or lease.lease_until is None or lease.lease_until <= datetime.now(UTC):
        return False
    return lease.lease_owner is None or not _holder_is_gone(lease.lease_owner)


async def start_run(conn: AsyncConnection, started_at: datetime, checkpoint: str | None) -> int:
    result = await conn.execute(
        insert(PollerRun)
        .values(started_at=started_at, start_checkpoint=checkpoint, logs_read=0, stored=0, caught_up=False)
        .returning(PollerRun.id)
    )
    return int(result.scalar_one())


async def close_abandoned_runs(conn: AsyncConnection, now: datetime) -> int:
    """Close the runs still open: only the pass lock's holder calls this, before it opens its own run,
    so every open run belongs to a pass that can no longer close it. Returns how many it closed."""
    result = await conn.execute(
        update(PollerRun).where(PollerRun.ended_at.is_(None)).values(ended_at=now, error=ABANDONED)
    )
    return int(result.rowcount)


async def finish_run(conn: AsyncConnection, run_id: int, **values: object) -> None:
    # Also over ABANDONED: a pass that outlived its lock (a frozen process) knows best how it ended.
    await conn.execute(update(PollerRun).where(PollerRun.id == run_id).values(**values))


async def prune_runs(conn: AsyncConnection, now: datetime, retention: timedelta) -> int:
    """Delete the runs past the history's bound (see KEEP_RUNS); returns how many went."""
    oldest_kept = await conn.scalar(
        select(PollerRun.id).order_by(PollerRun.id.desc()).offset(KEEP_RUNS - 1).limit(1)
    )
    beyond_newest = PollerRun.id < oldest_kept if oldest_kept is not None else false()
    day_ago = now - timedelta(days=1)
    result = await conn.execute(
        delete(PollerRun).where(
            PollerRun.started_at < day_ago,
            or_(PollerRun.started_at < now - retention, beyond_newest),
        )
    )
    return int(result.rowcount)


async def last_run(conn: AsyncConnection) -> Row[Any] | None:
    runs = PollerRun.__table__
    return (await conn.execute(select(runs).order_by(runs.c.id.desc()).limit(1))).first()


async def last_run_id(conn: AsyncConnection) -> int:
    """The id of the latest run, 0 when there is none."""
    return int(await conn.scalar(select(func.max(PollerRun.id))) or 0)


async def runs_since(conn: AsyncConnection, since: datetime) -> list[Row[Any]]:
    runs = PollerRun.__table__
    return list(await conn.execute(select(runs).where(runs.c.started_at >= since).order_by(runs.c.id)))


async def describe(conn: AsyncConnection, lag_limit: timedelta) -> dict[str, Any]:
    """The checkpoint, the last run and the lag, as GET /api/poller shows them."""
    state = await load_state(conn)
    run = await last_run(conn)
    checkpoint_at = date_of_log_id(state.checkpoint)
    now = datetime.now(UTC)
    if run is not None and run.caught_up and run.ended_at is not None:
        # Nothing was newer when that run ended, but a poller that has stopped must not look current.
        lag: timedelta | None = now - run.ended_at
    else:
        lag = now - checkpoint_at if checkpoint_at else None
    return {
        "running": await is_pass_running(conn),
        "checkpoint": state.checkpoint,
        "checkpoint_date": checkpoint_at,
        "start_from": state.start_from,
        "resume_at": state.resume_at if state.resume_at and state.resume_at > now else None,
        "last_run": None
        if run is None
        else {
            "id": run.id,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "start_checkpoint": run.start_checkpoint,
            "end_checkpoint": run.end_checkpoint,
            "logs_read": run.logs_read,
            "stored": run.stored,
            "caught_up": run.caught_up,
            "error": run.error,
            "warning": run.warning,
        },
        "lag_seconds": None if lag is None else int(lag.total_seconds()),
        "lag_warning": lag is not None and lag > lag_limit,
    }


class SavedTokens:
    """Management API tokens kept in poller_state, with this process's cache in front: `poll --once`
    from cron would otherwise fetch one per run (about 43,000 a month at one a minute).

    The database only saves fetches: when it fails, the token lives in memory and the pass goes on.
    Its errors are logged by class name only, since a SQLAlchemy message carries the parameters."""

    def __init__(self, engine: AsyncEngine, cache: TokenCache) -> None:
        self._engine = engine
        self._cache = cache

    async def get(self, key: str) -> Token | None:
        if token := await self._cache.get(key):
            return token
        columns = (
            PollerState.access_token,
            PollerState.access_token_expires_at,
            PollerState.access_token_renew_at,
        )
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(*columns).where(PollerState.name == STATE, PollerState.access_token_key == key)
                    )
                ).first()
        except SQLAlchemyError as exc:
            _not_kept(exc)
            return None
        if row is None:
            return None
        value, expires_at, renew_at = row
        if value is None or expires_at is None or renew_at is None:
            return None
        token = Token(value, expires_at.timestamp(), renew_at.timestamp())
        await self._cache.put(key, token)
        return token

    async def put(self, key: str, token: Token) -> None:
        await self._cache.put(key, token)
        await self._execute(
            update(PollerState)
            .where(PollerState.name == STATE)
            .values(
                access_token=token.value,
                access_token_key=key,
                access_token_expires_at=datetime.fromtimestamp(token.expires_at, UTC),
                access_token_renew_at=datetime.fromtimestamp(token.renew_at, UTC),
            )
        )

    async def drop(self, key: str) -> None:
        await self._cache.drop(key)
        # Only this key's token: another process may have saved one for other credentials since.
        await self._execute(
            update(PollerState)
            .where(PollerState.name == STATE, PollerState.access_token_key == key)
            .values(
                access_token=None,
                access_token_key=None,
                access_token_expires_at=None,
                access_token_renew_at=None,
            )
        )

    async def _execute(self, statement: Update) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(statement)
        except SQLAlchemyError as exc:
            _not_kept(exc)


def _not_kept(exc: SQLAlchemyError) -> None:
    log.warning(
        "the Management API token could not be kept in the database", extra={"reason": type(exc).__name__}
    )
