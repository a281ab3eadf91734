"""Reading: checkpoint paging, restarts, START_FROM, tokens, rate limits, and one store with the stream."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth0.management import log_id_at
from app.config import Settings
from app.models import LogEvent
from app.poller.poll import poll_once
from tests.conftest import auth
from tests.poller.fake_auth0 import FakeAuth0, make_logs
from tests.poller.support import Pauses, checkpoint, ids, stored_ids


def before(item: dict[str, Any], **delta: float) -> str:
    """The checkpoint made from an item's date, less `delta`."""
    return log_id_at(datetime.fromisoformat(item["date"]) - timedelta(**delta))


async def test_every_log_is_stored_once_across_runs_and_restarts(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    first = make_logs(35)
    fake.add(first)
    settings = poller_settings()
    async with context_for(settings) as context:
        result = await poll_once(context)
        again = await poll_once(context)
    assert result.ok, result
    assert result.caught_up
    # The first page (by date) is read again by id from its earliest date; each log counts once in
    # logs_read all the same.
    assert (result.logs_read, result.stored, result.pages) == (35, 35, 5)
    assert (again.logs_read, again.stored) == (0, 0)
    assert await checkpoint(engine) == first[-1]["_id"]
    # The first request has no checkpoint: the oldest retained logs, by date; then `from` paging,
    # from a minute before the oldest log's date.
    assert fake.log_requests[0] == {"sort": "date:1", "page": "0", "per_page": "10"}
    assert fake.log_requests[1] == {"from": before(first[0], minutes=1), "take": "10"}

    later = make_logs(12, first=36)
    fake.add(later)
    asked = len(fake.log_requests)
    async with context_for(settings) as context:  # a restart: a new process state, the same database
        after_restart = await poll_once(context)
    assert after_restart.ok
    assert after_restart.stored == 12
    assert fake.log_requests[asked]["from"] == first[-1]["_id"]
    assert await stored_ids(engine) == sorted(ids(first + later))
    async with engine.connect() as conn:
        sources = set(await conn.scalars(select(LogEvent.source)))
    assert sources == {"poller"}


async def test_token_is_cached_across_passes_and_renewed_on_401(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(25))
    async with context_for(poller_settings()) as context:
        assert (await poll_once(context)).stored == 25
        assert fake.token_requests == 1
        fake.add(make_logs(5, first=26))
        fake.revoke_tokens()  # Auth0 now answers 401 to the cached token
        result = await poll_once(context)
    assert result.ok
    assert result.stored == 5
    assert fake.token_requests == 2
    assert len(await stored_ids(engine)) == 30


async def test_start_from_date_is_applied_once(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    day = datetime(2026, 11, 20, tzinfo=UTC)
    old = make_logs(5, start=day)
    new = make_logs(5, start=day + timedelta(days=1), first=6)
    fake.add(old + new)
    settings = poller_settings(start_from="2026-11-21")
    async with context_for(settings) as context:
        result = await poll_once(context)
        assert result.stored == 5
        assert fake.log_requests[0] == {"from": "900" + "20261121000000" + "0" * 39, "take": "10"}
        assert await stored_ids(engine) == ids(new)
        again = await poll_once(context)  # the same START_FROM does not reset the checkpoint
    assert again.logs_read == 0
    assert fake.log_requests[-1]["from"] == new[-1]["_id"]

    # A changed START_FROM (a log id this time) moves the checkpoint once more.
    async with context_for(poller_settings(start_from=old[1]["_id"])) as context:
        moved = await poll_once(context)
    assert moved.logs_read == 8
    assert moved.stored == 3
    assert await stored_ids(engine) == ids(old[2:] + new)


async def test_an_event_from_stream_and_poller_is_stored_once(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    start_server: Any,
    context_for: Any,
    engine: AsyncEngine,
) -> None:
    items = make_logs(20)
    fake.add(items)
    settings = poller_settings()
    server = await start_server(settings)
    body = b"\n".join(
        b'{"log_id": "%s", "data": {"log_id": "%s", "type": "s", "date": "%s"}}'
        % (i["_id"].encode(), i["_id"].encode(), i["date"].encode())
        for i in items[:8]
    )
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        answer = await client.post("/api/logs", content=body, headers=auth())
        assert answer.json()["stored"] == 8
    result = await poll_once(server.context)
    assert result.stored == 12
    async with engine.connect() as conn:
        by_source = dict(
            (await conn.execute(select(LogEvent.source, func.count()).group_by(LogEvent.source))).all()
        )
    assert by_source == {"stream": 8, "poller": 12}


async def test_rate_limit_headers_and_429_are_waited_out_not_failures(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(40))
    fake.rate_limit = 2  # two calls per window; the third would draw a 429
    fake.clock = time.time()  # a window ends when the poller has waited for it, however slow the machine
    fake.force_429 = {3}
    pauses = Pauses(then=fake.window_passes)
    async with context_for(poller_settings()) as context:
        result = await poll_once(context, wait=pauses)
    assert result.ok, result
    assert result.caught_up
    # The 2nd call's x-ratelimit-remaining 0 is waited out, so is the 3rd call's (forced) 429, then the
    # 5th call's remaining 0 (the 7th and last needs no wait): no 429 is drawn but the forced one.
    assert len(fake.log_requests) == 7
    assert fake.limited == 1
    assert result.rate_limit_waits == len(pauses.seconds) == 3
    assert result.stored == 40
    assert len(await stored_ids(engine)) == 40


async def test_rate_limit_beyond_the_budget_ends_the_pass_with_a_warning(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    items = make_logs(30)
    fake.add(items)
    fake.rate_limit = 1
    fake.window = 3600.0  # the reset is an hour away, beyond POLL_MAX_RUN_SECONDS
    fake.clock = time.time()  # from now, not from the top of the hour (which may be a second away)
    async with context_for(poller_settings(poll_max_run_seconds=5)) as context:
        result = await poll_once(context)
    assert result.ok
    assert not result.caught_up
    assert result.stored == 10
    assert result.warnings
    assert "rate limit" in result.warnings[0]
    assert await stored_ids(engine) == ids(items[:10])
    assert await checkpoint(engine) == before(items[0], minutes=1)  # the first (date) page's start
