"""The background loops beside the API: delivery (relay), housekeeping and the Auth0 poller.

`serve` runs them in-process by default; `worker` runs them alone. Each loop has the same shape:
do one unit of work; if there was none, wait for the interval or the stop signal, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from app.context import Context
from app.delivery import run_delivery_loop
from app.housekeeping import run_housekeeping_loop
from app.poller.loop import run_poller_loop

log = logging.getLogger(__name__)

Loop = Callable[[Context, asyncio.Event], Coroutine[Any, Any, None]]


def background_loops(context: Context) -> list[Loop]:
    """The loops this configuration needs."""
    loops: list[Loop] = [run_delivery_loop, run_housekeeping_loop]
    if context.settings.auth0_domain:
        loops.append(run_poller_loop)
    return loops


class Workers:
    def __init__(self, context: Context) -> None:
        self._context = context
        self._stop = context.stopping
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = []
        for loop in background_loops(self._context):
            task = asyncio.create_task(loop(self._context, self._stop), name=loop.__name__)
            task.add_done_callback(self._ended)
            self._tasks.append(task)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A loop that ends before it is stopped is said at once: the API goes on without it, and
        its error would otherwise wait for the shutdown."""
        if task.cancelled():
            return
        if error := task.exception():
            log.error("background loop %s stopped: %r", task.get_name(), error, exc_info=error)
        elif not self._stop.is_set():
            log.error("background loop %s ended before it was stopped", task.get_name())

    async def stop(self) -> None:
        self._stop.set()
        # Each loop's own error, if any, was logged when it ended.
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks)
