"""Rate limits: a 429 (from the logs or the token endpoint) is waited out with a backoff that honours
Retry-After and never spins, and a pass that a rate limit ended is followed only after the reset.
The waits go through a recording pause, so nothing here sleeps or depends on timing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth0.management import RateLimited
from app.config import Settings
from app.models import PollerRun
from app.poller.loop import run_poller_loop
from app.poller.poll import poll_once
from app.poller.rate_limits import MAX_RATE_WAIT, rate_limit_wait
from tests.conftest import ADMIN_TOKEN, READ_TOKEN, bearer
from tests.poller.fake_auth0 import FakeAuth0, make_logs
from tests.poller.support import Pauses, run_poll_once, stored_ids


async def test_a_429_whose_reset_is_already_past_backs_off_exponentially(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(15))
    fake.force_429 = {1, 2, 3, 4}
    fake.reset_in = -5  # our clock runs 5 s ahead of Auth0's
    pauses = Pauses()
    async with context_for(poller_settings()) as context:
        result = await poll_once(context, wait=pauses)
    assert result.ok
    assert result.caught_up
    assert result.rate_limit_waits == 4
    assert pauses.seconds == [1.0, 2.0, 4.0, 8.0]
    assert len(await stored_ids(engine)) == 15


async def test_a_429_honours_retry_after(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any
) -> None:
    fake.add(make_logs(15))
    fake.force_429 = {1}
    fake.retry_after = 20  # the reset header says within a second; Retry-After says longer
    pauses = Pauses()
    async with context_for(poller_settings()) as context:
        result = await poll_once(context, wait=pauses)
    assert result.ok
    assert result.stored == 15
    assert pauses.seconds == [20.0]


def test_the_backoff_is_capped_and_a_far_reset_is_not_trusted() -> None:
    now = 1_800_000_000.0
    assert rate_limit_wait(RateLimited("x", None, None), 1, now) == 1.0
    assert rate_limit_wait(RateLimited("x", None, None), 30, now) == MAX_RATE_WAIT
    assert rate_limit_wait(RateLimited("x", now + 7.5, None), 1, now) == 7.5
    assert rate_limit_wait(RateLimited("x", now + 86400, None), 1, now) == MAX_RATE_WAIT  # clock skew
    assert rate_limit_wait(RateLimited("x", now - 5, 3.0), 1, now) == 3.0


async def test_a_429_from_the_token_endpoint_is_a_rate_limit_not_a_failure(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(12))
    fake.token_429 = {1}
    fake.retry_after = 3
    pauses = Pauses()
    async with context_for(poller_settings()) as context:
        result = await poll_once(context, wait=pauses)
    assert result.ok, result.error
    assert result.rate_limit_waits == 1
    assert pauses.seconds == [3.0]
    assert fake.token_requests == 2
    assert len(await stored_ids(engine)) == 12


async def test_a_pass_ended_by_a_rate_limit_is_followed_only_after_the_reset(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(5))
    fake.force_429 = set(range(1, 1000))  # every logs request: 429, reset an hour away
    fake.reset_in = 3600
    stop = asyncio.Event()
    fake.on_logs_request = lambda n: stop.set() if n == 3 else None  # bounds a spinning loop
    pauses = Pauses(stop_after=1)  # the loop's first pause ends the test
    # The rate-limit wait (MAX_RATE_WAIT, a far reset is not trusted) exceeds the pass's budget.
    settings = poller_settings(poll_schedule="1s", poll_max_run_seconds=20)
    async with context_for(settings) as context:
        await run_poller_loop(context, stop, wait=pauses)
    assert len(fake.log_requests) == 1
    [pause] = pauses.seconds
    assert pause > MAX_RATE_WAIT - 10  # until the reset, not the 1 s schedule
    async with engine.connect() as conn:
        [(runs, warning)] = (await conn.execute(select(func.count(), func.max(PollerRun.warning)))).all()
    assert runs == 1
    assert "rate limit" in warning


async def test_a_pass_ended_by_a_rate_limit_holds_back_every_process_until_the_reset(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    start_server: Any,
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    fake.add(make_logs(15))
    fake.force_429 = set(range(1, 1000))  # every logs request: 429, reset an hour away (trusted: 60 s)
    fake.reset_in = 3600
    settings = poller_settings(poll_max_run_seconds=20)  # the wait is beyond the pass's budget
    server = await start_server(settings)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        ended = await client.post("/api/poller/run", headers=bearer(ADMIN_TOKEN))
        assert ended.status_code == 200, ended.text
        assert "rate limit" in ended.json()["warning"]
        resume_at = datetime.fromisoformat(ended.json()["resume_at"])
        asked = len(fake.log_requests)

        # Another process (cron's `poll --once`), and the API of this one, wait for the reset too.
        code, out, err = await run_poll_once(settings, tmp_path, POLL_MAX_RUN_SECONDS="20")
        refused = await client.post("/api/poller/run", headers=bearer(ADMIN_TOKEN))
        status = (await client.get("/api/poller", headers=bearer(READ_TOKEN))).json()
    assert len(fake.log_requests) == asked
    assert code == 0, err
    assert orjson.loads(out)["ran"] is False
    assert f"the Auth0 rate limit holds until {resume_at.isoformat(timespec='seconds')}" in err.decode()
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "rate_limited"
    assert resume_at.isoformat(timespec="seconds") in refused.json()["detail"]
    assert 0 < int(refused.headers["retry-after"]) <= 61
    assert datetime.fromisoformat(status["resume_at"]) == resume_at
    assert resume_at > datetime.now(UTC)
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(PollerRun)) == 1  # no run for those
