"""Group commit: the one place where ingest transactions begin and end.

Requests hand their batch to a writer and wait. The writer takes every batch queued while the
previous commit was on disk and stores them in one transaction, so one fsync serves many requests,
and each request is answered only after the commit that holds its own events.

On SQLite the writer runs each whole transaction on its own thread, on a synchronous connection.
Through the async driver each statement would wait for a turn of the event loop to start the next,
and under load a turn is long: the loop is parsing the next requests.
On PostgreSQL a few writer tasks keep several transactions in flight.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ingest import Batch, StoreResult, store_batches

log = logging.getLogger(__name__)

_Pending = tuple[Batch, "asyncio.Future[StoreResult]"]
_STOP = None  # queued once per writer by stop(): the writer ends after what it holds


class GroupCommitter:
    def __init__(
        self, engine: AsyncEngine, *, max_rows: int, writers: int, sqlite_writer: Engine | None = None
    ) -> None:
        self._engine = engine
        self._sqlite_writer = sqlite_writer
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer") if sqlite_writer else None
        self._max_rows = max_rows
        self._writers = 1 if sqlite_writer else writers
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def store(self, batch: Batch) -> StoreResult:
        """Store one batch durably; returns once the transaction holding it has committed."""
        future: asyncio.Future[StoreResult] = asyncio.get_running_loop().create_future()
        await self._queue.put((batch, future))
        return await future

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write_loop()) for _ in range(self._writers)]

    async def stop(self) -> None:
        for _ in self._tasks:
            await self._queue.put(_STOP)
        await asyncio.gather(*self._tasks)
        while not self._queue.empty():  # anything queued after the stop is answered, not dropped
            if item := self._queue.get_nowait():
                await self._commit([item])
        if self._thread:
            self._thread.shutdown()
        if self._sqlite_writer:
            self._sqlite_writer.dispose()

    async def _write_loop(self) -> None:
        while (first := await self._queue.get()) is not _STOP:
            pending = [first]
            rows = len(first[0].rows)
            while rows < self._max_rows and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    await self._queue.put(item)  # end after this commit
                    break
                pending.append(item)
                rows += len(item[0].rows)
            await self._commit(pending)

    async def _commit(self, pending: list[_Pending]) -> None:
        try:
            results = await self._transaction([batch for batch, _ in pending])
        except Exception as exc:
            if len(pending) > 1:
                # One bad batch must not fail the requests that shared its transaction.
                for item in pending:
                    await self._commit([item])
                return
            log.exception("store failed", extra={"rows": len(pending[0][0].rows)})
            _settle(pending[0][1], exc)
            return
        for (_, future), result in zip(pending, results, strict=True):
            _settle(future, result)

    async def _transaction(self, batches: list[Batch]) -> list[StoreResult]:
        if self._sqlite_writer:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._store, batches)
        async with self._engine.begin() as conn:
            return await conn.run_sync(store_batches, batches)

    def _store(self, batches: list[Batch]) -> list[StoreResult]:
        assert self._sqlite_writer
        with self._sqlite_writer.begin() as conn:
            return store_batches(conn, batches)


def _settle(future: asyncio.Future[StoreResult], outcome: StoreResult | BaseException) -> None:
    if future.done():  # the request went away; its events are stored all the same
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
