"""Scheduling: POLL_SCHEDULE, the loop inside `serve`, one pass at a time, the API and the CLI."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import LogEvent, PollerRun, PollerState
from app.poller.command import run_poll_command
from app.poller.lease import ADVISORY_KEY
from app.poller.lock import is_pass_running
from app.poller.loop import run_poller_loop
from app.poller.poll import poll_once
from app.poller.runs import KEEP_RUNS
from app.schedule import parse_schedule
from tests.conftest import ADMIN_TOKEN, READ_TOKEN, bearer, is_postgres
from tests.poller.fake_auth0 import FakeAuth0, make_logs
from tests.poller.support import (
    Pauses,
    run_poll_once,
    serving,
    start_poll_once,
    until,
    until_no_pass_holds_the_lock,
)


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(LogEvent)) or 0)


async def wait_for_count(engine: AsyncEngine, expected: int) -> None:
    for _ in range(600):  # a bound on waiting, not a timing assertion
        if await count(engine) >= expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expected} stored events, found {await count(engine)}")


def test_poll_schedule_takes_intervals_and_cron() -> None:
    at = datetime(2026, 11, 23, 10, 2, 30, tzinfo=UTC)
    assert parse_schedule("30s").next_after(at) == at + timedelta(seconds=30)
    assert parse_schedule("5m").next_after(at) == at + timedelta(minutes=5)
    assert parse_schedule("2h").next_after(at) == at + timedelta(hours=2)
    assert parse_schedule("45").next_after(at) == at + timedelta(seconds=45)
    assert parse_schedule("*/5 * * * *").next_after(at) == at.replace(minute=5, second=0)
    # The extensions wrote 6 fields, seconds first.
    assert parse_schedule("0 */5 * * * *").next_after(at) == at.replace(minute=5, second=0)
    for bad in ("every five minutes", "0s", "* * *", "61 * * * *"):
        with pytest.raises(ValueError, match=r"interval|cron"):
            parse_schedule(bad)


def test_bad_poller_settings_are_named(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValidationError, match="poll_schedule"):
        make_settings(poll_schedule="sometimes")
    for never in ("0 0 30 2 *", "0 0 0 31 4 *"):  # 30 February, 31 April: valid fields, no date
        with pytest.raises(ValidationError, match="never comes"):
            make_settings(poll_schedule=never)
    assert make_settings(poll_schedule="0 0 29 2 *").poll_schedule == "0 0 29 2 *"  # leap years
    with pytest.raises(ValidationError, match="START_FROM '2026-13-45' is not a valid ISO date"):
        make_settings(start_from="2026-13-45")
    with pytest.raises(ValidationError, match="AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET"):
        make_settings(auth0_domain="tenant.eu.auth0.com")
    assert make_settings(auth0_domain="tenant.eu.auth0.com", auth0_client_id="a", auth0_client_secret="b")


async def test_only_one_pass_runs_at_a_time_across_replicas(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(25))
    fake.hold_from = 1  # the first pass waits inside its first request, holding the lock
    settings = poller_settings()
    async with context_for(settings) as replica_a, context_for(settings) as replica_b:
        first = asyncio.create_task(poll_once(replica_a))
        await fake.held.wait()
        second = await poll_once(replica_b)
        assert not second.ran
        async with engine.connect() as conn:
            assert await is_pass_running(conn)
            open_runs = select(func.count()).select_from(PollerRun).where(PollerRun.ended_at.is_(None))
            open_while_held = await conn.scalar(open_runs)
        fake.release.set()
        result = await first
        async with engine.connect() as conn:
            assert not await is_pass_running(conn)
        after = await poll_once(replica_b)  # the lock is free again
    assert result.ran
    assert result.ok
    assert result.stored == 25
    assert after.ran
    assert after.ok
    assert after.stored == 0
    assert await count(engine) == 25
    assert open_while_held == 1  # refused the lock, the second left the running pass's run open
    async with engine.connect() as conn:
        assert list(await conn.scalars(select(PollerRun.error))) == [None, None]


async def test_the_api_shows_the_poller_and_an_admin_runs_a_pass(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], start_server: Any, engine: AsyncEngine
) -> None:
    items = make_logs(15)
    fake.add(items)
    server = await start_server(poller_settings())
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        assert (await client.get("/api/poller")).status_code == 401
        before = (await client.get("/api/poller", headers=bearer(READ_TOKEN))).json()
        assert before["enabled"]
        assert before["checkpoint"] is None
        assert before["last_run"] is None
        assert (await client.post("/api/poller/run", headers=bearer(READ_TOKEN))).status_code == 403
        ran = await client.post("/api/poller/run", headers=bearer(ADMIN_TOKEN))
        assert ran.status_code == 200, ran.text
        assert ran.json()["stored"] == 15
        assert ran.json()["error"] is None
        status = (await client.get("/api/poller", headers=bearer(READ_TOKEN))).json()
    assert status["checkpoint"] == items[-1]["_id"]
    assert status["checkpoint_date"].startswith(items[-1]["date"][:19])
    assert status["last_run"]["stored"] == 15
    assert status["last_run"]["caught_up"]
    assert 0 <= status["lag_seconds"] < 3600  # the time since that run ended
    assert not status["lag_warning"]
    assert not status["running"]
    assert status["schedule"] == "5m"
    [token] = fake.tokens  # kept in the database, never shown
    assert token not in ran.text
    assert token not in str(status)


async def test_running_a_pass_without_auth0_settings_is_a_conflict(
    settings: Settings, start_server: Any, engine: AsyncEngine
) -> None:
    server = await start_server(settings)
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        answer = await client.post("/api/poller/run", headers=bearer(ADMIN_TOKEN))
        status = await client.get("/api/poller", headers=bearer(READ_TOKEN))
    assert answer.status_code == 409
    assert "AUTH0_DOMAIN" in answer.json()["detail"]
    assert status.json()["enabled"] is False


async def test_serve_polls_on_the_schedule(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], start_server: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(12))
    await start_server(poller_settings(poll_schedule="1s"), run_workers=True)
    await wait_for_count(engine, 12)
    fake.add(make_logs(5, first=13))
    await wait_for_count(engine, 17)
    assert await count(engine) == 17


async def test_a_cron_schedule_that_never_comes_stops_logrelay_naming_it(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    code, _, err = await run_poll_once(poller_settings(), tmp_path, POLL_SCHEDULE="0 0 30 2 *")
    assert code == 2
    assert err.decode().startswith("logrelay: invalid setting POLL_SCHEDULE: '0 0 30 2 *' never comes"), err
    assert not fake.log_requests


async def test_a_background_loop_that_dies_is_logged_at_once(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    start_server: Any,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A schedule that validation would refuse (model_copy does not validate): the poller loop fails
    # as it starts, as any loop might from a fault; serve goes on, and says so now, not at shutdown.
    settings = poller_settings().model_copy(update={"poll_schedule": "sometimes"})
    server = await start_server(settings, run_workers=True)
    await until(lambda: any(r.getMessage().startswith("background loop") for r in caplog.records), "the log")
    [record] = [r for r in caplog.records if r.getMessage().startswith("background loop")]
    assert record.levelno == logging.ERROR
    assert "run_poller_loop" in record.getMessage()
    assert record.exc_info is not None
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        assert (await client.get("/readyz")).status_code == 200


async def test_poll_once_command_exit_codes(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.add(make_logs(5))
    assert await run_poll_command(poller_settings(), once=True) == 0
    assert orjson.loads(capsys.readouterr().out.strip())["stored"] == 5
    assert await run_poll_command(poller_settings(auth0_client_secret="wrong"), once=True) == 1
    assert "refused the client credentials" in capsys.readouterr().err
    assert await run_poll_command(make_settings(), once=True) == 2
    capsys.readouterr()
    no_database = poller_settings(database_url="postgresql://postgres@127.0.0.1:1/none")
    assert await run_poll_command(no_database, once=True) == 1
    assert "logrelay: poll failed" in capsys.readouterr().err


async def test_logrelay_poll_once_as_a_process(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], engine: AsyncEngine, tmp_path: Path
) -> None:
    fake.add(make_logs(6))
    settings = poller_settings()
    code, out, _ = await run_poll_once(settings, tmp_path, BATCH_SIZE="4")
    assert code == 0
    assert orjson.loads(out)["stored"] == 6
    code, _, _ = await run_poll_once(settings, tmp_path, AUTH0_CLIENT_SECRET="wrong")
    assert code == 1
    assert await count(engine) == 6


async def take_the_pass_lock_away(engine: AsyncEngine) -> str:
    """End the running pass's hold on polling as it can end; what that pass is then told."""
    async with engine.begin() as conn:
        if not is_postgres():  # the lease runs out (a process frozen far too long)
            expired = datetime.now(UTC) - timedelta(seconds=1)
            await conn.execute(update(PollerState).values(lease_until=expired))
            return "took over the lease"
        killed = await conn.scalar(  # the lock's connection drops (an idle timeout, a proxy)
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid::bigint = :high AND objid::bigint = :low"
            ),
            {"high": ADVISORY_KEY >> 32, "low": ADVISORY_KEY & 0xFFFFFFFF},
        )
        assert killed
    await until_no_pass_holds_the_lock(engine)  # the backend exits a moment after it is told to
    return "lost its advisory lock"


async def test_a_pass_that_lost_its_lock_cannot_move_the_checkpoint(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    items = make_logs(30)
    fake.add(items)
    fake.hold_from = 3  # pass A stores two pages, then stalls in its third request
    settings = poller_settings(start_from="2026-01-01")
    async with context_for(settings) as replica_a, context_for(settings) as replica_b:
        stalled = asyncio.create_task(poll_once(replica_a))
        await fake.held.wait()
        told = await take_the_pass_lock_away(engine)
        fake.hold_from = None
        taken_over = await poll_once(replica_b)
        fake.release.set()
        late = await stalled
    assert taken_over.ran
    assert taken_over.ok
    assert late.error is not None
    assert told in late.error
    assert await count(engine) == 30
    async with engine.connect() as conn:
        assert await conn.scalar(select(PollerState.checkpoint)) == items[-1]["_id"]


async def test_the_lag_of_a_poller_that_stopped_after_catching_up_grows(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], start_server: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(5))
    server = await start_server(poller_settings())
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        ran = await client.post("/api/poller/run", headers=bearer(ADMIN_TOKEN))
        assert ran.json()["caught_up"]
        # That pass caught up, and no pass has run since: 20 days.
        twenty_days_ago = datetime.now(UTC) - timedelta(days=20)
        async with engine.begin() as conn:
            await conn.execute(update(PollerRun).values(started_at=twenty_days_ago, ended_at=twenty_days_ago))
        status = (await client.get("/api/poller", headers=bearer(READ_TOKEN))).json()
    assert status["last_run"]["caught_up"]
    assert status["lag_seconds"] >= 20 * 86400
    assert status["lag_warning"]


async def assert_ended_cleanly(stopped: dict[str, Any], engine: AsyncEngine) -> None:
    """A pass that SIGTERM ended: it ran without error, not caught up, its run closed and its lease
    given back."""
    assert stopped["ran"]
    assert stopped["error"] is None
    assert not stopped["caught_up"]
    async with engine.connect() as conn:
        lease = (await conn.execute(select(PollerState.lease_owner, PollerState.lease_until))).one()
        ended = list(await conn.scalars(select(PollerRun.ended_at)))
    assert tuple(lease) == (None, None)
    assert len(ended) == 1
    assert ended[0] is not None


async def test_sigterm_ends_poll_once_cleanly(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], engine: AsyncEngine, tmp_path: Path
) -> None:
    fake.add(make_logs(5))
    fake.force_429, fake.retry_after = {1}, 120  # the pass waits two minutes inside its first request
    settings = poller_settings()
    process = await start_poll_once(settings, tmp_path)
    await until(lambda: bool(fake.log_requests), "the first logs request")
    process.send_signal(signal.SIGTERM)  # as `timeout` or a systemd stop would
    out, err = await process.communicate()
    assert process.returncode == 0, err
    await assert_ended_cleanly(orjson.loads(out), engine)
    code, out, err = await run_poll_once(settings, tmp_path)  # the next cron run is not locked out
    assert code == 0, err
    assert orjson.loads(out)["stored"] == 5


async def test_the_run_history_is_pruned_when_a_run_closes(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    now = datetime.now(UTC)
    old, two_days, recent = now - timedelta(days=40), now - timedelta(days=2), now - timedelta(hours=1)
    rows = [(old, 5), (two_days, 1100), (recent, KEEP_RUNS + 10)]
    async with engine.begin() as conn:
        for started_at, n in rows:
            values = {"started_at": started_at, "ended_at": started_at, "logs_read": 0, "stored": 0}
            await conn.execute(insert(PollerRun), [values | {"caught_up": True}] * n)
    async with context_for(poller_settings(log_retention_days=30)) as context:
        result = await poll_once(context)
    assert result.ok
    async with engine.connect() as conn:
        kept = list(await conn.scalars(select(PollerRun.started_at)))
    # Older than the retention: gone. Older than a day and beyond the newest KEEP_RUNS: gone. The
    # last day stays whole (the daily report reads it), and so does the run that just closed.
    assert len(kept) == KEEP_RUNS + 10 + 1
    assert min(kept) >= now - timedelta(days=1)


async def test_sigterm_ends_a_pass_started_through_the_api_cleanly(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], engine: AsyncEngine, tmp_path: Path
) -> None:
    fake.add(make_logs(5))
    fake.force_429, fake.retry_after = {1}, 120  # the pass waits two minutes inside its first request
    async with serving(poller_settings(), tmp_path, RUN_WORKERS="false") as (process, base_url):
        # Longer than uvicorn's graceful shutdown (30 s), after which it would cancel the request.
        async with httpx.AsyncClient(base_url=base_url, timeout=90) as client:
            running = asyncio.create_task(client.post("/api/poller/run", headers=bearer(ADMIN_TOKEN)))
            await until(lambda: bool(fake.log_requests), "the first logs request")
            process.send_signal(signal.SIGTERM)  # as a container stop or systemd would
            answer = await running
        await asyncio.wait_for(process.wait(), 60)  # a bound on waiting: it shuts down
    assert answer.status_code == 200, answer.text
    await assert_ended_cleanly(answer.json(), engine)
    async with engine.connect() as conn:
        assert not await is_pass_running(conn)


async def test_replicas_keep_one_interval_between_them(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(5))
    settings = poller_settings(poll_schedule="1h")
    async with context_for(settings) as replica_a, context_for(settings) as replica_b:
        assert (await poll_once(replica_a)).stored == 5  # A's loop, a cron `poll --once`, the API
        asked = len(fake.log_requests)
        # B's loop starts (a restart, `serve --workers 2`, another replica): the next pass is due an
        # hour after A's, not now.
        pauses = Pauses(stop_after=1)
        await run_poller_loop(replica_b, asyncio.Event(), wait=pauses)
    assert len(fake.log_requests) == asked
    [pause] = pauses.seconds
    assert 3500 < pause <= 3600
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(PollerRun)) == 1


async def test_a_pass_planned_before_another_process_ran_one_is_skipped(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(5))
    async with context_for(poller_settings()) as replica_a, context_for(poller_settings()) as replica_b:
        # B planned its pass when no run was recorded (0); A ran one before B took the lock.
        assert (await poll_once(replica_a)).ran
        asked = len(fake.log_requests)
        late = await poll_once(replica_b, last_run_id=0)
    assert not late.ran
    assert late.skipped == "ran_elsewhere"
    assert len(fake.log_requests) == asked
