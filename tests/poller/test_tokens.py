"""The Management API token: kept in the database so that `logrelay poll --once` processes share
one, renewed shortly before it expires (a share of a short lifetime) and on a 401, and never logged
(nor shown by the API: see test_scheduling)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth0.management import renew_margin
from app.config import Settings
from app.models import PollerState
from app.poller.poll import poll_once
from tests.poller.fake_auth0 import FakeAuth0, make_logs
from tests.poller.support import failing_write, run_poll_once


async def saved_token(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(select(PollerState.access_token))


async def test_poll_once_processes_share_one_token_until_it_is_due(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], engine: AsyncEngine, tmp_path: Path
) -> None:
    fake.add(make_logs(5))
    settings = poller_settings()
    outputs = b""

    async def run() -> None:
        nonlocal outputs
        code, out, err = await run_poll_once(settings, tmp_path, SERVICE_LOG_LEVEL="debug")
        assert code == 0, err
        outputs += out + err

    for _ in range(3):  # cron, three minutes
        await run()
    assert fake.token_requests == 1
    [token] = fake.tokens
    assert await saved_token(engine) == token

    async with engine.begin() as conn:  # due for renewal: the next process fetches a new one
        await conn.execute(update(PollerState).values(access_token_renew_at=datetime.now(UTC)))
    await run()
    assert fake.token_requests == 2

    fake.revoke_tokens()  # a 401: a new token, saved for the processes after
    await run()
    await run()
    assert fake.token_requests == 3
    assert await saved_token(engine) in fake.tokens
    assert b"poll pass finished" in outputs  # the debug log was on
    for issued in [token, *fake.tokens]:
        assert issued.encode() not in outputs


async def test_a_token_the_database_cannot_keep_is_used_and_never_logged(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.add(make_logs(5))
    with caplog.at_level(logging.DEBUG, logger="app"):
        async with (
            failing_write(engine, "UPDATE", "poller_state", "NEW.access_token IS NOT NULL"),
            context_for(poller_settings()) as context,
        ):
            result = await poll_once(context)
    assert result.ok, result.error
    assert result.stored == 5
    assert await saved_token(engine) is None
    assert any("could not be kept" in r.getMessage() for r in caplog.records)
    [token] = fake.tokens
    assert not [r for r in caplog.records if token in r.getMessage() or token in str(r.__dict__)]


async def test_a_short_lived_token_is_reused_within_its_lifetime(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any
) -> None:
    fake.token_expires_in = 60
    fake.add(make_logs(45))
    async with context_for(poller_settings()) as context:
        result = await poll_once(context)
    assert result.stored == 45
    assert len(fake.log_requests) == 7  # by date, then 5 pages by id and the empty one
    assert fake.token_requests == 1


def test_the_renewal_margin_is_a_minute_or_a_tenth_of_a_short_lifetime() -> None:
    assert renew_margin(86400) == 60
    assert renew_margin(600) == 60
    assert renew_margin(60) == 6
    assert renew_margin(10) == 1
    assert renew_margin(0) == 0
