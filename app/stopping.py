"""Waiting that a stop signal cuts short: the pause of every background loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

# A loop's pause, as a parameter: tests pass one that records what it was asked and returns at once.
Wait = Callable[[asyncio.Event, float], Awaitable[None]]


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, but return at once when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


MAX_FAILURE_PAUSE = 30.0  # seconds: the longest pause of a loop whose work keeps failing


class Backoff:
    """The pause of a loop whose work keeps failing (the database is gone): `base` doubled with each
    failure in a row, up to MAX_FAILURE_PAUSE, and `base` again after a success. An outage is then
    neither hammered nor logged, with a traceback, many times a second."""

    def __init__(self, base: float) -> None:
        self.base = base
        self.failures = 0

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self) -> float:
        """Seconds to pause after one more failure."""
        self.failures += 1
        return max(self.base, min(MAX_FAILURE_PAUSE, self.base * 2.0 ** min(self.failures - 1, 32)))
