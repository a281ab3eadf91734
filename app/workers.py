"""The background loops beside the API: delivery (relay), housekeeping and the Auth0 poller.

`serve` runs them in-process by default; `worker` runs them alone. Each loop has the same shape:
do one unit of work; if there was none, wait for the interval or the stop signal, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from app.context import Context
from app.delivery import run_delivery_loop
from app.housekeeping import run_housekeeping_loop
from app.poller import run_poller_loop

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
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(loop(self._context, self._stop)) for loop in background_loops(self._context)
        ]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks)
