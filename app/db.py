"""The engine and its dialect settings: SQLite in WAL mode with full sync, or PostgreSQL via asyncpg."""

from __future__ import annotations

import logging
import socket
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

log = logging.getLogger(__name__)

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


# A host that goes silent (a failover, a NAT's idle timeout, a pulled cable) sends no RST: without
# keepalive an idle connection to it waits for ever, and unacknowledged data is retransmitted for about
# 15 minutes before the kernel gives up. With these, a connection to a silent host fails in about a
# minute, idle or with data in flight, and a live one costs one probe per 30 s of silence. Constants,
# not settings: a live host's kernel answers probes and acknowledges data whatever PostgreSQL is doing,
# so no query, however long, is cut by them.
KEEPALIVE_IDLE = 30  # seconds of silence before the first probe
KEEPALIVE_INTERVAL = 10  # seconds between probes
KEEPALIVE_COUNT = 3  # unanswered probes that end the connection: 30 + 3 x 10 = 60 s
USER_TIMEOUT = 60  # seconds sent data may stay unacknowledged (Linux TCP_USER_TIMEOUT), as long
CONNECT_TIMEOUT = 10  # seconds for a new connection, handshake included (asyncpg's default is 60)
# A session idle inside a transaction this long is ended by PostgreSQL, which frees its locks: logrelay
# never waits on anything else inside a transaction, so only a client that vanished or hung is ended.
IDLE_IN_TRANSACTION_TIMEOUT = 60  # seconds


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
    return _postgres_engine(settings, {}, pool_size=10, max_overflow=10, **kwargs)


def make_ingest_engine(settings: Settings, *, writers: int) -> AsyncEngine:
    """PostgreSQL connections of the group committer's own, one per writer.

    Their sessions wait for a lock at most half COMMIT_TIMEOUT: PostgreSQL then ends the wait itself
    (a 503, the connection kept) before the committer gives up on the connection, and no other
    transaction is held to that limit. Apart from the shared pool, a backlog of reads cannot keep
    ingest waiting for a connection.
    """
    lock_timeout = max(1, round(settings.commit_timeout * 500))  # milliseconds; 0 would mean none
    return _postgres_engine(settings, {"lock_timeout": str(lock_timeout)}, pool_size=writers, max_overflow=0)


def _postgres_engine(settings: Settings, server_settings: dict[str, str], **kwargs: Any) -> AsyncEngine:
    settings_sent = {
        # Plan each statement for its actual values: event filters are heavily skewed (one user has
        # ten events, another ten thousand), and the generic plan a prepared statement falls back to
        # after five runs reads the wrong index for one or the other.
        "plan_cache_mode": "force_custom_plan",
        "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT * 1000),
        # The server's side of the same keepalive: a logrelay host that vanished has its sessions, and
        # the locks they hold (the poller's advisory lock), ended in about a minute, not two hours.
        # PostgreSQL ignores them on a Unix socket.
        "tcp_keepalives_idle": str(KEEPALIVE_IDLE),
        "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
        "tcp_keepalives_count": str(KEEPALIVE_COUNT),
        "tcp_user_timeout": str(USER_TIMEOUT * 1000),
        **server_settings,
    }
    engine = create_async_engine(
        settings.database_url,
        **_ENGINE_OPTIONS,
        pool_recycle=1800,
        connect_args={"timeout": CONNECT_TIMEOUT, "server_settings": settings_sent},
        **kwargs,
    )
    event.listen(engine.sync_engine, "connect", _keepalive)
    event.listen(engine.sync_engine, "checkout", _replace_closed)
    return engine


def _keepalive(dbapi_connection: Any, _record: Any) -> None:
    # asyncpg has no keepalive option (MagicStack/asyncpg#606); its connection keeps the transport,
    # whose socket takes the options.
    transport = getattr(dbapi_connection.driver_connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        log.warning("no socket found on a PostgreSQL connection: it has no TCP keepalive")
        return
    if sock.family in (socket.AF_INET, socket.AF_INET6):  # not a Unix socket
        _set_keepalive(sock)


def _set_keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL,
        "TCP_KEEPCNT": KEEPALIVE_COUNT,
        "TCP_USER_TIMEOUT": USER_TIMEOUT * 1000,  # milliseconds
    }
    for name, value in options.items():
        if (option := getattr(socket, name, None)) is not None:  # each is missing on some systems
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _replace_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    # A connection the server closed while it sat in the pool (a restart or failover,
    # pg_terminate_backend, a pgbouncer restart, an idle-connection killer) is replaced before use,
    # instead of failing the request that draws it. asyncpg knows without a round trip; pool_pre_ping
    # would cost three per checkout (BEGIN, the ping, ROLLBACK: +0.3 ms of CPU per transaction here).
    # Keepalive closes one whose host went silent the same way.
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the database closed this pooled connection")


# SQLSTATE classes of a database that cannot serve anyone right now: connection exception (08),
# insufficient resources (53: too many connections, disk full), operator intervention (57: shutdown,
# terminated, starting up), system error (58: I/O), no such database (3D), and a lock not obtained
# within lock_timeout (55P03: ingest's, see make_ingest_engine).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57", "58", "3D", "55P03")


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
