"""Faults: each ends the pass with a clear error (or warning), loses nothing, and a later pass goes on."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import LogEvent, PollerRun
from app.poller.poll import poll_once
from tests.poller.fake_auth0 import CLIENT_SECRET, FakeAuth0, Receiver, make_logs
from tests.poller.support import checkpoint, failing_write, ids, stored_ids

# Every test reads in checkpoint mode from the start, so pages are items[0:10], items[10:20], ...
BEFORE_ALL = "2026-01-01"


async def test_a_store_failure_mid_run_never_moves_the_checkpoint_past_unstored_logs(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    items = make_logs(30)
    fake.add(items)
    async with context_for(poller_settings(start_from=BEFORE_ALL)) as context:
        async with failing_write(engine, "INSERT", "log_events", f"NEW.log_id = '{items[24]['_id']}'"):
            failed = await poll_once(context)
            assert failed.error
            assert "simulated store failure" in failed.error
            assert failed.stored == 20
            assert await checkpoint(engine) == items[19]["_id"]
            assert await stored_ids(engine) == ids(items[:20])
        asked = len(fake.log_requests)
        healed = await poll_once(context)
    assert healed.ok
    assert healed.stored == 10
    assert fake.log_requests[asked]["from"] == items[19]["_id"]  # the failed page is read again
    assert await stored_ids(engine) == ids(items)
    async with engine.connect() as conn:
        runs = (await conn.execute(select(PollerRun.error, PollerRun.stored).order_by(PollerRun.id))).all()
    assert [(r.error is not None, r.stored) for r in runs] == [(True, 20), (False, 10)]


async def test_a_pass_killed_between_fetch_and_commit_rereads_rather_than_skips(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    items = make_logs(30)
    fake.add(items)
    fake.hold_from = 3  # the third page is asked for, and the pass dies before storing it
    async with context_for(poller_settings(start_from=BEFORE_ALL)) as context:
        task = asyncio.create_task(poll_once(context))
        await fake.held.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await stored_ids(engine) == ids(items[:20])
        assert await checkpoint(engine) == items[19]["_id"]
        fake.hold_from = None
        fake.release.set()
        again = await poll_once(context)  # the lease was released; the same page is asked again
    assert again.ok
    assert again.stored == 10
    assert [r["from"] for r in fake.log_requests[2:4]] == [items[19]["_id"]] * 2
    assert await stored_ids(engine) == ids(items)


async def test_wrong_credentials_fail_the_pass_with_a_clear_error(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(5))
    settings = poller_settings(auth0_client_secret="not-the-secret")
    async with context_for(settings) as context:
        result = await poll_once(context)
    assert result.error is not None
    assert "refused the client credentials" in result.error
    assert "401" in result.error
    assert "not-the-secret" not in result.error
    assert CLIENT_SECRET not in result.error
    assert await stored_ids(engine) == []
    async with engine.connect() as conn:
        assert await conn.scalar(select(PollerRun.error)) == result.error


async def test_a_refused_grant_is_not_called_wrong_credentials(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any
) -> None:
    fake.grant_refused = True
    async with context_for(poller_settings()) as context:
        result = await poll_once(context)
    assert result.error is not None
    assert "refused the client-credentials grant" in result.error
    assert "(403: bad grant or audience)" in result.error
    assert f"audience {context.settings.auth0_base_url}/api/v2/" in result.error
    assert "client credentials of" not in result.error


async def test_an_unknown_domain_is_a_connection_error(
    poller_settings: Callable[..., Settings], context_for: Any
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    async with context_for(poller_settings(auth0_domain=f"http://127.0.0.1:{closed}")) as context:
        result = await poll_once(context)
    assert result.error
    assert "cannot reach Auth0 at http://127.0.0.1" in result.error


async def test_an_answer_that_is_not_json_fails_the_pass_and_keeps_the_checkpoint(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    items = make_logs(25)
    fake.add(items)
    fake.not_json = {2}
    async with context_for(poller_settings(start_from=BEFORE_ALL)) as context:
        failed = await poll_once(context)
        assert failed.error
        assert "not JSON" in failed.error
        assert "text/html" in failed.error
        assert await checkpoint(engine) == items[9]["_id"]
        healed = await poll_once(context)
    assert healed.ok
    assert await stored_ids(engine) == ids(items)


async def test_logs_without_an_id_are_stored_under_a_content_hash_with_a_warning(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    items = make_logs(15)
    anonymous = {k: v for k, v in items[4].items() if k not in ("_id", "log_id")}
    items[4] = anonymous
    fake.add(items)
    with caplog.at_level(logging.WARNING, logger="app.poller"):
        async with context_for(poller_settings(start_from=BEFORE_ALL)) as context:
            first = await poll_once(context)
            second = await poll_once(context)
    assert first.ok
    assert first.stored == 15
    assert second.stored == 0
    assert any("without _id or log_id" in r.getMessage() for r in caplog.records)
    async with engine.connect() as conn:
        generated = (await conn.execute(select(LogEvent.log_id).where(LogEvent.id_generated))).scalars().all()
    assert len(generated) == 1
    assert generated[0].startswith("sha256:")
    assert await checkpoint(engine) == items[-1]["_id"]


async def test_a_checkpoint_auth0_no_longer_knows_restarts_from_the_oldest_log_loudly(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    items = make_logs(40)
    fake.add(items[:20])
    async with context_for(poller_settings(start_from=BEFORE_ALL)) as context:
        assert (await poll_once(context)).stored == 20
        fake.add(items[20:])
        fake.expired_before = items[25]["_id"]  # retention deleted the checkpoint and 5 logs after it
        result = await poll_once(context)
    assert result.ok
    assert result.alert
    assert "no longer" in result.warnings[0] or "does not know" in result.warnings[0]
    assert "may have been lost" in result.warnings[0]
    assert await stored_ids(engine) == ids(items[:20] + items[25:])


@pytest.mark.parametrize("id_has_date", [True, False])
async def test_a_checkpoint_older_than_the_retention_warns_loudly_even_when_auth0_answers(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    engine: AsyncEngine,
    slack: Receiver,
    slack_url: str,
    caplog: pytest.LogCaptureFixture,
    id_has_date: bool,
) -> None:
    aged = make_logs(3, start=datetime.now(UTC) - timedelta(days=40))
    if not id_has_date:  # an id of another shape: the date comes from the stored event
        for n, item in enumerate(aged, start=1):
            item["_id"] = item["log_id"] = f"{n:030d}"
    recent = make_logs(10, first=4)
    fake.add(aged)
    settings = poller_settings(
        log_retention_days=30, slack_incoming_webhook_url=slack_url, daily_report_time=23
    )
    async with context_for(settings) as context:
        first = await poll_once(context)  # no checkpoint yet: the oldest retained logs, nothing lost
        assert first.ok
        assert not first.warnings
        assert await checkpoint(engine) == aged[-1]["_id"]
        # The poller then stopped for 40 days; Auth0 deleted what it kept no longer, and still answers
        # `from=` that checkpoint (no 400) with the logs after it.
        fake.add(recent)
        with caplog.at_level(logging.ERROR, logger="app.poller"):
            result = await poll_once(context)
    assert result.ok
    assert result.stored == 10
    assert result.alert
    [warning] = result.warnings
    assert f"the checkpoint {aged[-1]['_id']} dates from " in warning
    assert "older than the 30-day log retention" in warning
    assert "may have been lost" in warning
    assert any("older than the log retention" in r.getMessage() for r in caplog.records)
    async with engine.connect() as conn:
        assert await conn.scalar(select(PollerRun.warning).where(PollerRun.id == result.run_id)) == warning
    [report] = [b for b in slack.bodies() if "Daily" not in b["attachments"][0]["text"]]
    assert report["attachments"][0]["color"] == "#d13f42"
    assert "may have been lost" in next(
        f["value"] for f in report["attachments"][0]["fields"] if f["title"] == "Warning"
    )


async def test_a_network_failure_mid_run_fails_the_pass_and_the_next_one_goes_on(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    items = make_logs(30)
    fake.add(items)
    fake.drop_from = 3  # from the third page on, every connection breaks mid-answer
    async with context_for(poller_settings(start_from=BEFORE_ALL)) as context:
        failed = await poll_once(context)
        assert failed.error
        assert "cannot reach Auth0" in failed.error
        assert await checkpoint(engine) == items[19]["_id"]
        fake.drop_from = None
        fake.drop = {len(fake.log_requests) + 1}  # one more broken answer: asked again in the pass
        healed = await poll_once(context)
    assert healed.ok
    assert healed.stored == 10
    assert await stored_ids(engine) == ids(items)


async def test_lag_beyond_the_retention_share_warns_loudly(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any
) -> None:
    items = make_logs(30, start=datetime.now(UTC) - timedelta(days=20))
    fake.add(items)
    stop = asyncio.Event()
    fake.on_logs_request = lambda n: stop.set() if n == 1 else None  # the pass ends after one page
    start_from = (datetime.now(UTC) - timedelta(days=21)).date().isoformat()  # within the retention
    settings = poller_settings(start_from=start_from, log_retention_days=30, lag_warn_share=0.5)
    async with context_for(settings) as context:
        behind = await poll_once(context, stop=stop)
        caught_up = await poll_once(context)
    assert behind.ok
    assert not behind.caught_up
    assert behind.alert
    assert behind.warnings == [behind.warnings[0]]
    assert "trails real time by 20.0 days" in behind.warnings[0]
    # A pass that reads to the end has no lag, however old the last log is (a quiet tenant).
    assert caught_up.ok
    assert caught_up.caught_up
    assert not caught_up.warnings
