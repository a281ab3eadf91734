"""A pass's pages of GET /api/v2/logs (Fetcher): one page at a time from a checkpoint, within the
pass's time budget, waiting out the rate limit and asking again after a transient failure."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from app.auth0 import management
from app.auth0.management import LogsPage, ManagementClient
from app.config import Settings
from app.poller.rate_limits import MAX_RATE_WAIT, rate_limit_wait
from app.poller.result import PassResult, Stopped
from app.stopping import Wait

log = logging.getLogger(__name__)

TRANSIENT_RETRIES = 3  # a 5xx or a dropped connection is asked again this often within a pass
TRANSIENT_DELAY = 0.5  # seconds, doubled per retry


class Fetcher:
    """The pages of one pass, and its budget (POLL_MAX_RUN_SECONDS from now) and pauses: shutdown
    during a pause, or a rate limit that outlasts the budget, ends the pass (Stopped). Its waits are
    counted in the pass's result."""

    def __init__(
        self,
        client: ManagementClient,
        settings: Settings,
        stop: asyncio.Event,
        wait: Wait,
        result: PassResult,
    ) -> None:
        self.client, self.stop, self.wait, self.result = client, stop, wait, result
        self.take = min(settings.batch_size, management.MAX_TAKE)
        self.deadline = time.monotonic() + settings.poll_max_run_seconds

    def check_budget(self) -> None:
        """Stopped when shutdown began or the budget is spent."""
        if self.stop.is_set() or time.monotonic() >= self.deadline:
            raise Stopped("")  # not a warning: the next pass continues from the checkpoint

    async def fetch(self, checkpoint: str | None) -> LogsPage:
        """One page; waits out a 429 and asks again after a transient failure, within the budget."""
        failures = limited = 0
        while True:
            try:
                return await self.client.get_logs(checkpoint, self.take)
            except management.RateLimited as exc:
                limited += 1
                await self._wait_for_rate_limit(rate_limit_wait(exc, limited, time.time()), str(exc))
                self.result.rate_limit_waits += 1
            except (management.Unreachable, management.ServerError) as exc:
                failures += 1
                delay = TRANSIENT_DELAY * 2 ** (failures - 1)
                if failures > TRANSIENT_RETRIES or time.monotonic() + delay > self.deadline:
                    raise
                log.warning(
                    "Auth0 request failed; asking again", extra={"reason": str(exc), "attempt": failures}
                )
                await self._pause(delay)

    async def respect_rate_limit(self, page: LogsPage) -> None:
        """x-ratelimit-remaining 0: wait for x-ratelimit-reset before the next call rather than draw a 429."""
        if page.rate.remaining is None or page.rate.remaining > 0:
            return
        now = time.time()
        reset_in = (page.rate.reset_at or now + 1) - now
        await self._wait_for_rate_limit(
            min(max(reset_in, 0.0) + 0.05, MAX_RATE_WAIT), "x-ratelimit-remaining is 0"
        )
        self.result.rate_limit_waits += 1

    async def _wait_for_rate_limit(self, seconds: float, why: str) -> None:
        if time.monotonic() + seconds > self.deadline:
            resume_at = datetime.now(UTC) + timedelta(seconds=seconds)
            self.result.resume_at = resume_at
            raise Stopped(
                f"Auth0 Management API rate limit reached ({why}); the next pass starts no earlier "
                f"than {resume_at.isoformat(timespec='seconds')}"
            )
        log.info(
            "waiting for the Auth0 rate limit to reset", extra={"seconds": round(seconds, 2), "why": why}
        )
        await self._pause(seconds)

    async def _pause(self, seconds: float) -> None:
        await self.wait(self.stop, seconds)
        if self.stop.is_set():
            raise Stopped("")
