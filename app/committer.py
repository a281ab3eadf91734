"""Group commit: the one place where ingest transactions begin and end.

Requests hand their batch to a writer and wait. The writer takes the batches queued while the
previous commit was on disk, in order while they fit in COMMIT_MAX_ROWS rows, and stores them in one
transaction, so one fsync serves many requests, and each request is answered only after the commit
that holds its own events. A batch that would take the group past COMMIT_MAX_ROWS begins the next
group instead (the receiver cuts a larger body into parts of that many, so no batch is larger alone;
one that were would be a group of its own). A batch the database refuses fails alone: the group is
retried batch by batch. A database that is unavailable (locked, unreachable) fails the whole group at
once: a retry per batch would only wait again, once each.

SQLite has one writer at a time, so its committer is one thread with a synchronous connection that
takes batches straight from a thread-safe queue: through the async driver every statement, and the
hand-over between commits, would wait for a turn of the event loop, which under load is busy parsing
the next requests. PostgreSQL takes a few transactions in parallel: a few writer tasks on the loop.

A PostgreSQL commit that has not finished within COMMIT_TIMEOUT fails its group with CommitTimeout (a
503: Auth0 sends the events again, and they are deduplicated, so a commit whose outcome is unknown is
safe to retry) and its connection is closed, so that a host gone silent holds no writer for longer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import is_unavailable
from app.ingest import Batch, StoreResult, store_batches

log = logging.getLogger(__name__)

_Pending = tuple[Batch, "asyncio.Future[StoreResult]"]
_Outcome = StoreResult | Exception


class CommitTimeout(TimeoutError):
    """A group commit did not finish in time; whether it was committed is unknown."""


class Committer(Protocol):
    async def store(self, batch: Batch) -> StoreResult: ...
    def start(self) -> None: ...
    async def stop(self) -> None: ...


class SQLiteCommitter:
    """One writer thread on a synchronous SQLite connection."""

    def __init__(self, engine: Engine, *, max_rows: int) -> None:
        self._engine = engine
        self._max_rows = max_rows
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)

    async def store(self, batch: Batch) -> StoreResult:
        """Store one batch durably; returns once the transaction holding it has committed."""
        future: asyncio.Future[StoreResult] = asyncio.get_running_loop().create_future()
        self._queue.put((batch, future))
        return await future

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        """Commits and answers everything queued, then ends the thread."""
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._engine.dispose()

    def _run(self) -> None:
        stopping = False
        carried: _Pending | None = None  # taken from the queue, but too large for the last group
        while not stopping and (first := self._queue.get() if carried is None else carried) is not None:
            pending, carried = [first], None
            rows = _size(first)
            while rows < self._max_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # the stop signal: this group is the last
                    stopping = True
                    break
                if not _fits(rows, item, self._max_rows):
                    carried = item  # the next group's first
                    break
                pending.append(item)
                rows += _size(item)
            outcomes = _outcomes(self._transaction, [batch for batch, _ in pending])
            for (_, future), outcome in zip(pending, outcomes, strict=True):
                future.get_loop().call_soon_threadsafe(_settle, future, outcome)

    def _transaction(self, batches: list[Batch]) -> list[StoreResult]:
        with self._engine.begin() as conn:
            return store_batches(conn, batches)


class AsyncCommitter:
    """A few writer tasks on the event loop, each with its own transaction (PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, *, max_rows: int, writers: int, timeout: float) -> None:
        self._engine = engine
        self._max_rows = max_rows
        self._writers = writers
        self._timeout = timeout
        # A deque rather than an asyncio.Queue: a writer looks at the next batch before it takes it, and
        # leaves one that does not fit in its group to the next writer free, in its turn.
        self._queue: deque[_Pending | None] = deque()
        self._queued = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    async def store(self, batch: Batch) -> StoreResult:
        """Store one batch durably; returns once the transaction holding it has committed."""
        future: asyncio.Future[StoreResult] = asyncio.get_running_loop().create_future()
        await self._put((batch, future))
        return await future

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write_loop()) for _ in range(self._writers)]

    async def stop(self) -> None:
        """Commits and answers everything queued, then ends the writers."""
        for _ in self._tasks:
            await self._put(None)
        await asyncio.gather(*self._tasks)
        await self._engine.dispose()

    async def _put(self, item: _Pending | None) -> None:
        async with self._queued:
            self._queue.append(item)
            self._queued.notify()

    async def _next_group(self) -> list[_Pending] | None:
        """The batches of the next transaction, in order and within max_rows; None: stop."""
        async with self._queued:
            await self._queued.wait_for(lambda: bool(self._queue))
            if (first := self._queue.popleft()) is None:
                return None
            pending = [first]
            rows = _size(first)
            # A stop signal (None) stays queued, behind this group, for a writer to take in its turn.
            while self._queue and (item := self._queue[0]) is not None and _fits(rows, item, self._max_rows):
                pending.append(item)
                rows += _size(item)
                self._queue.popleft()
            if self._queue:
                self._queued.notify()  # what is left is another writer's, should one be waiting
            return pending

    async def _write_loop(self) -> None:
        while (pending := await self._next_group()) is not None:
            outcomes = await _outcomes_async(self._transaction, [batch for batch, _ in pending])
            for (_, future), outcome in zip(pending, outcomes, strict=True):
                _settle(future, outcome)

    async def _transaction(self, batches: list[Batch]) -> list[StoreResult]:
        """One transaction, given up `timeout` seconds after it starts (CommitTimeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        async with _connection(self._engine, deadline) as conn:
            # The deadline closes the connection under the transaction rather than cancelling it:
            # asyncpg would send a cancel request on a new connection, to a host that may not answer,
            # and the rollback after it would wait on the connection that does not.
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            closing = loop.call_at(deadline, driver.terminate)
            try:
                async with conn.begin():
                    return await conn.run_sync(store_batches, batches)
            except Exception as exc:
                if loop.time() >= deadline:  # the connection was closed by the deadline, or is lost
                    raise CommitTimeout(f"no commit within {self._timeout:g} s") from exc
                raise
            finally:
                closing.cancel()


@asynccontextmanager
async def _connection(engine: AsyncEngine, deadline: float) -> AsyncIterator[AsyncConnection]:
    """A connection from the pool by `deadline`: a new one to a silent host hangs in its handshake."""
    try:
        async with asyncio.timeout_at(deadline):
            conn = await engine.connect()
    except TimeoutError:
        raise CommitTimeout("no connection to the database in time") from None
    try:
        yield conn
    finally:
        await conn.close()


def _outcomes(
    transaction: Callable[[list[Batch]], list[StoreResult]], batches: list[Batch]
) -> list[_Outcome]:
    try:
        return list(transaction(batches))
    except Exception as exc:
        if len(batches) == 1 or is_unavailable(exc):  # every batch would fail the same way
            _log_failure(exc, batches)
            return [exc] * len(batches)
    return [outcome for batch in batches for outcome in _outcomes(transaction, [batch])]


async def _outcomes_async(
    transaction: Callable[[list[Batch]], Awaitable[list[StoreResult]]], batches: list[Batch]
) -> list[_Outcome]:
    try:
        return list(await transaction(batches))
    except Exception as exc:
        if len(batches) == 1 or is_unavailable(exc):  # every batch would fail the same way
            _log_failure(exc, batches)
            return [exc] * len(batches)
    return [outcome for batch in batches for outcome in await _outcomes_async(transaction, [batch])]


def _size(pending: _Pending) -> int:
    """The rows a batch adds to a transaction: its events and its quarantined lines."""
    batch = pending[0]
    return len(batch.rows) + len(batch.rejected)


def _fits(rows: int, pending: _Pending, max_rows: int) -> bool:
    """Whether a batch may join a group of `rows` rows: a transaction takes at most max_rows."""
    return rows + _size(pending) <= max_rows


def _log_failure(exc: Exception, batches: list[Batch]) -> None:
    rows = sum(len(batch.rows) for batch in batches)
    extra = {"rows": rows, "batches": len(batches)}
    log.error("store failed: %s", type(exc).__name__, exc_info=exc, extra=extra)


def _settle(future: asyncio.Future[StoreResult], outcome: _Outcome) -> None:
    if future.done():  # the request went away; its events are stored all the same
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
