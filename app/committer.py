"""Group commit: the one place where ingest transactions begin and end.

Requests hand their batch to a writer task and wait. The writer takes every batch queued while the
previous commit was on disk and stores them in one transaction, so one fsync serves many requests,
and each request is answered only after the commit that holds its own events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from app.ingest import Batch, StoreResult, store_batches

log = logging.getLogger(__name__)

_Pending = tuple[Batch, "asyncio.Future[StoreResult]"]


class GroupCommitter:
    def __init__(self, engine: AsyncEngine, *, max_rows: int, writers: int) -> None:
        self._engine = engine
        self._max_rows = max_rows
        self._writers = writers
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def store(self, batch: Batch) -> StoreResult:
        """Store one batch durably; returns once the transaction holding it has committed."""
        future: asyncio.Future[StoreResult] = asyncio.get_running_loop().create_future()
        await self._queue.put((batch, future))
        return await future

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write_loop()) for _ in range(self._writers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():  # anything still queued is answered, not dropped
            await self._commit([self._queue.get_nowait()])

    async def _write_loop(self) -> None:
        while True:
            pending = [await self._queue.get()]
            rows = len(pending[0][0].rows)
            while rows < self._max_rows and not self._queue.empty():
                item = self._queue.get_nowait()
                pending.append(item)
                rows += len(item[0].rows)
            await self._commit(pending)

    async def _commit(self, pending: list[_Pending]) -> None:
        try:
            async with self._engine.begin() as conn:
                results = await store_batches(conn, [batch for batch, _ in pending])
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


def _settle(future: asyncio.Future[StoreResult], outcome: StoreResult | BaseException) -> None:
    if future.done():  # the request went away; its events are stored all the same
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
