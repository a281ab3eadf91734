"""With no checkpoint (a first install, or after Auth0 forgot the checkpoint), the poller starts from
the oldest retained log by date. A log's id carries the time Auth0 stored it, seconds after its date
at times, so a log dated after the oldest logs may have a smaller id than all of them: none is
skipped, and each log counts once in "logs processed" wherever a pass ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import PollerRun
from app.poller.poll import poll_once
from tests.poller.fake_auth0 import FakeAuth0, log_id, make_logs
from tests.poller.support import ids, stored_ids


def log_stored_at(date: datetime, stored_at: datetime, n: int) -> dict[str, Any]:
    """A log dated `date` whose id carries `stored_at`, as in the fixtures (date 03:53:28.106, id
    90020240308035328208838...)."""
    lid = log_id(stored_at, n)
    when = date.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"_id": lid, "log_id": lid, "date": when, "type": "s", "description": "Successful login"}


@pytest.mark.parametrize("checkpoint", ["none yet", "unknown to Auth0"])
async def test_a_log_stored_before_the_oldest_logs_but_dated_after_them_is_read(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    engine: AsyncEngine,
    checkpoint: str,
) -> None:
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    first = log_stored_at(t, t + timedelta(seconds=4), 1)  # stored 4 s after its date
    second = log_stored_at(t + timedelta(milliseconds=500), t + timedelta(seconds=4), 2)
    quick = log_stored_at(t + timedelta(seconds=1), t + timedelta(seconds=1), 3)  # a smaller id than both
    later = log_stored_at(t + timedelta(seconds=9), t + timedelta(seconds=9), 4)
    fake.add([first, second, quick, later])
    # A page sorted by date holds `first` and `second`; `quick` is on no later page by date, and
    # after their smallest id on no page by id.
    settings = poller_settings(batch_size=2)
    if checkpoint == "unknown to Auth0":  # the 400 path restarts from the oldest retained log too
        settings = poller_settings(batch_size=2, start_from="1" * 56)
        fake.expired_before = "2"  # `from` 111...1 names a log Auth0 no longer has: 400
    async with context_for(settings) as context:
        result = await poll_once(context)
    assert result.ok, result
    assert result.caught_up
    assert await stored_ids(engine) == sorted(ids(fake.logs))
    assert (result.logs_read, result.stored) == (4, 4)


@pytest.mark.parametrize(
    ("refused", "cut_at"),
    [
        (False, 1),  # the pass ends right after the page sorted by date
        (True, 1),  # ... and the next pass is refused the `from` made from its date
        (True, 2),  # the pass ends right after Auth0 refused that `from`
    ],
    ids=["after-the-page-by-date", "then-refused", "after-a-refused-start"],
)
async def test_each_log_counts_once_wherever_the_first_pass_ends(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    engine: AsyncEngine,
    refused: bool,
    cut_at: int,
) -> None:
    items = make_logs(25)
    fake.add(items)
    if refused:  # a `from` made from the oldest log's date is before that log's id: 400
        fake.expired_before = items[0]["_id"]
    stop = asyncio.Event()  # as SIGTERM would; the budget or a rate limit end a pass there too
    fake.on_logs_request = lambda n: stop.set() if n == cut_at else None
    async with context_for(poller_settings()) as context:
        cut = await poll_once(context, stop=stop)
        fake.on_logs_request = None
        rest = await poll_once(context)
    assert cut.ok, cut
    assert not cut.caught_up
    assert rest.ok, rest
    assert rest.caught_up
    assert not rest.warnings  # a `from` before the oldest log loses nothing: no alarm
    assert cut.logs_read + rest.logs_read == len(items)
    assert cut.stored + rest.stored == len(items)
    assert await stored_ids(engine) == ids(items)
    async with engine.connect() as conn:  # what the daily report adds up
        assert await conn.scalar(select(func.sum(PollerRun.logs_read))) == len(items)
