"""Waiting that a stop signal cuts short: the pause of every background loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Any

# A loop's pause, as a parameter: tests pass one that records what it was asked and returns at once.
Wait = Callable[[asyncio.Event, float], Awaitable[None]]


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, but return at once when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


@contextlib.contextmanager
def set_on_shutdown_signals(event: asyncio.Event) -> Iterator[None]:
    """Set `event` when SIGTERM or SIGINT arrives, before the handler already installed runs.

    uvicorn's handler stops taking requests and waits for those in flight (up to its graceful
    timeout, then cancels them) before the lifespan ends; a poll pass that a request started must
    hear of the shutdown at once to end cleanly. Only a Python handler (uvicorn's) is wrapped: with
    none, the signal ends the process as it would have.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    loop = asyncio.get_running_loop()
    wrapped: dict[int, Callable[[int, FrameType | None], Any]] = {}

    def handle(sig: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(event.set)
        wrapped[sig](sig, frame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if callable(previous):
            wrapped[sig] = previous
            signal.signal(sig, handle)
    try:
        yield
    finally:
        for number, handler in wrapped.items():
            if signal.getsignal(number) is handle:  # unless someone wrapped it in turn
                signal.signal(number, handler)


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
