"""The engine and its dialect settings: SQLite in WAL mode with full sync, or PostgreSQL via asyncpg."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, MetaData, create_engine, event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from app.config import Settings
from app.files import private_file

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class RawJSON(str):
    """JSON text that is already encoded: stored as it is, never encoded twice."""

    __slots__ = ()


def dump_json(value: Any) -> str:
    if type(value) is RawJSON:
        return value
    return orjson.dumps(value).decode()


# JSON columns: RawJSON stored as it is, everything else through orjson. Parameters are event content
# (user names, IPs): hidden, so that an error message does not carry them into the logs.
_ENGINE_OPTIONS: dict[str, Any] = {
    "json_serializer": dump_json,
    "json_deserializer": orjson.loads,
    "hide_parameters": True,
}


# Keys of transaction-level advisory locks (PostgreSQL), "lr" in the high half.
ENV_DESTINATIONS_LOCK = 0x6C720001
REPLAY_LOCK = 0x6C720002
MIGRATE_LOCK = 0x6C720003
RETENTION_LOCK = 0x6C720004


async def take_turns(conn: AsyncConnection, key: int, sub: int = 0) -> None:
    """Make transactions that read rows and then write on what they read take turns across replicas
    and processes; call it before those reads. PostgreSQL: a transaction-level advisory lock on
    (key, sub). SQLite: the database's write lock (every key at once). Either is released when the
    transaction ends."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key, :sub)"), {"key": key, "sub": sub})
    else:
        await conn.execute(_SQLITE_WRITE_LOCK)


# pysqlite begins a transaction only at the first write statement, so reads before it are no part of
# it: two transactions could read the same "nothing yet" and both write. A write that changes nothing
# begins the transaction and takes SQLite's write lock now (waiting up to busy_timeout for another
# writer); the reads after it see every commit before. Only transactions that take turns pay this:
# read-only ones (the query API) never wait for a writer.
_SQLITE_WRITE_LOCK = text("UPDATE destinations SET id = id WHERE 0")


async def db_now(conn: AsyncConnection) -> datetime:
    """The database's clock, which replicas on hosts whose clocks differ share: delivery leases and
    due times are set and compared by it.

    PostgreSQL: now(), the start of the caller's transaction, one instant for all of its statements
    (statement_timestamp() would move between them); claims are short and skip locked rows rather
    than wait, so that instant is the claim's. SQLite: every process runs on the host that has the
    file, so the host clock is the database's and no query is needed.
    """
    return await _clock(conn, "now()")


async def db_clock(conn: AsyncConnection) -> datetime:
    """The database's clock at this moment, not at the start of the transaction (db_now): later than
    the creation of every row a statement before it could read."""
    return await _clock(conn, "clock_timestamp()")


async def _clock(conn: AsyncConnection, function: str) -> datetime:
    if conn.dialect.name != "postgresql":
        return datetime.now(UTC)
    now: datetime = await conn.scalar(text(f"SELECT {function}"))
    return now.astimezone(UTC)  # aware already (timestamptz); exact to the microsecond either way


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite database file (None on PostgreSQL)."""
    if not settings.is_sqlite:
        return None
    path = settings.database_url.split("///", 1)[-1].partition("?")[0]
    return Path(path) if path else None


def make_engine(settings: Settings, **kwargs: Any) -> AsyncEngine:
    if settings.is_sqlite:
        if path := sqlite_path(settings):
            private_file(path)
        engine = create_async_engine(
            settings.database_url,
            **_ENGINE_OPTIONS,
            connect_args={"timeout": 30},
            **kwargs,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        settings.database_url,
        **_ENGINE_OPTIONS,
        pool_size=10,
        max_overflow=10,
        pool_recycle=1800,
        # Plan each statement for its actual values: event filters are heavily skewed (one user has
        # ten events, another ten thousand), and the generic plan a prepared statement falls back to
        # after five runs reads the wrong index for one or the other.
        connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}},
        **kwargs,
    )
    event.listen(engine.sync_engine, "checkout", _replace_closed)
    return engine


def _replace_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    # A connection the server closed while it sat in the pool (a restart or failover,
    # pg_terminate_backend, a pgbouncer restart, an idle-connection killer) is replaced before use,
    # instead of failing the request that draws it. asyncpg knows without a round trip; pool_pre_ping
    # would cost three per checkout (BEGIN, the ping, ROLLBACK: +0.3 ms of CPU per transaction here).
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the database closed this pooled connection")


# SQLSTATE classes of a database that cannot serve anyone right now: connection exception (08),
# insufficient resources (53: too many connections, disk full), operator intervention (57: shutdown,
# terminated, starting up), system error (58: I/O), and no such database (3D).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57", "58", "3D")


def is_unavailable(exc: BaseException) -> bool:
    """The database, not the request, failed: it is unreachable, restarting, locked, full or out of
    connections, and the same request may well succeed later (a 503, which senders retry)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout | OSError):
        return True  # OSError: a refused or reset connection, a connect timeout, an unknown host
    sqlstate = getattr(exc.orig, "sqlstate", None) if isinstance(exc, DBAPIError) else None
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


def make_sqlite_writer_engine(settings: Settings) -> Engine:
    """A synchronous engine on the SQLite file, for the group committer's writer thread."""
    url = settings.database_url.replace("sqlite+aiosqlite://", "sqlite+pysqlite://", 1)
    engine = create_engine(
        url,
        **_ENGINE_OPTIONS,
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=1,
        max_overflow=0,
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; synchronous=FULL makes each commit durable before the
    # 2xx; busy_timeout lets `serve --workers N` processes share the file and wait for the write lock.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: the indexes stay in memory
    # Checkpoints run in the background (app.wal). The commit that takes the WAL past 20,000 pages
    # (80 MB) checkpoints the rest itself, which lets the WAL restart; at the default 1,000 pages
    # that would land in a commit several times a second.
    cursor.execute("PRAGMA wal_autocheckpoint=20000")
    cursor.close()
    # SQLite's lower() folds ASCII only, so `ilike` (lower(x) LIKE lower(?)) would miss "Élodie" for
    # "élodie"; PostgreSQL folds by its locale.
    dbapi_connection.create_function("lower", 1, _casefold, deterministic=True)


def _casefold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value
