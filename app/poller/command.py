"""`logrelay poll [--once]`: one pass or the loop, ended cleanly by SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator

import orjson

from app.config import Settings
from app.context import open_context
from app.poller.loop import run_poller_loop
from app.poller.poll import poll_once
from app.poller.result import PassResult

log = logging.getLogger(__name__)


async def run_poll_command(settings: Settings, *, once: bool) -> int:
    """`logrelay poll [--once]`: 0 when the pass succeeded (or did not run: another pass was running,
    or a rate limit's reset is ahead), 1 when it failed, 2 when the poller is not configured.
    SIGINT/SIGTERM end the pass cleanly in both modes."""
    if not settings.auth0_domain:
        print("logrelay: set AUTH0_DOMAIN, AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET to poll", file=sys.stderr)
        return 2
    try:
        async with open_context(settings) as context, _stop_on_signals() as stop:
            if once:
                return _report_once(await poll_once(context, stop=stop))
            await run_poller_loop(context, stop)
            return 0
    except Exception as exc:  # e.g. the database does not answer: one clear line, exit 1
        log.exception("poll command failed")
        print(f"logrelay: poll failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


@contextlib.asynccontextmanager
async def _stop_on_signals() -> AsyncIterator[asyncio.Event]:
    """An event SIGINT and SIGTERM set, so that the pass releases its lease and closes its run."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _report_once(result: PassResult) -> int:
    print(orjson.dumps(result.as_dict()).decode(), flush=True)
    if result.skipped == "rate_limited" and result.resume_at is not None:
        until = result.resume_at.isoformat(timespec="seconds")
        print(f"logrelay: the Auth0 rate limit holds until {until}; this run did nothing", file=sys.stderr)
    elif not result.ran:
        print("logrelay: another poll pass is running; this one did nothing", file=sys.stderr)
    elif result.error:
        print(f"logrelay: poll failed: {result.error}", file=sys.stderr)
    return 0 if result.ok else 1
