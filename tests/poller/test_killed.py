"""A `logrelay poll --once` killed mid-pass (SIGKILL: no handler runs): the next pass closes its run,
and on SQLite takes over its lease at once rather than after it expires."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import PollerRun, PollerState
from app.poller import owners
from app.poller.lock import is_pass_running
from app.poller.poll import poll_once
from app.poller.state import ensure_state
from tests.conftest import is_postgres
from tests.poller.fake_auth0 import FakeAuth0, make_logs
from tests.poller.support import start_poll_once, until, until_no_pass_holds_the_lock

sqlite_only = pytest.mark.skipif(is_postgres(), reason="the lease is SQLite's pass lock")


async def kill_a_pass_mid_run(fake: FakeAuth0, settings: Settings, cwd: Path) -> int:
    """Start `logrelay poll --once`, SIGKILL it inside its first logs request, and reap it; its pid."""
    fake.hold_from = 1
    process = await start_poll_once(settings, cwd)
    await until(fake.held.is_set, "the first logs request")
    process.send_signal(signal.SIGKILL)
    await process.wait()  # reaped: its pid no longer exists
    assert process.returncode == -signal.SIGKILL
    fake.hold_from = None
    fake.release.set()
    return process.pid


async def open_runs(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return len(list(await conn.scalars(select(PollerRun.id).where(PollerRun.ended_at.is_(None)))))


async def wait_for_the_lock_to_free(engine: AsyncEngine) -> None:
    """PostgreSQL drops the advisory lock when the killed process's backend exits, a moment later; on
    SQLite the lease would expire, which is made to happen at once."""
    if not is_postgres():
        async with engine.begin() as conn:
            expired = datetime.now(UTC) - timedelta(seconds=1)
            await conn.execute(update(PollerState).values(lease_until=expired))
    await until_no_pass_holds_the_lock(engine)


async def test_the_next_pass_closes_the_run_of_a_killed_pass(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    fake.add(make_logs(5))
    settings = poller_settings()
    await kill_a_pass_mid_run(fake, settings, tmp_path)
    assert await open_runs(engine) == 1  # nothing in the killed process could close it
    await wait_for_the_lock_to_free(engine)
    async with context_for(settings) as context:
        result = await poll_once(context)
    assert result.ran
    assert result.ok
    assert result.stored == 5
    async with engine.connect() as conn:
        killed, latest = (await conn.execute(select(PollerRun).order_by(PollerRun.id))).all()
    assert killed.ended_at is not None
    assert (
        result.started_at - timedelta(seconds=5)
        <= killed.ended_at
        <= result.started_at + timedelta(seconds=5)
    )
    assert "stopped before the pass finished" in killed.error
    assert latest.id == result.run_id
    assert latest.error is None
    assert await open_runs(engine) == 0


@sqlite_only
async def test_a_killed_pass_lease_is_taken_over_at_once_on_sqlite(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    fake.add(make_logs(5))
    settings = poller_settings(poll_max_run_seconds=600)  # a lease of 11 minutes
    pid = await kill_a_pass_mid_run(fake, settings, tmp_path)
    async with engine.connect() as conn:
        owner, until_ = (await conn.execute(select(PollerState.lease_owner, PollerState.lease_until))).one()
        assert f":{pid}:" in owner
        assert until_ > datetime.now(UTC) + timedelta(minutes=5)  # the dead process's lease stands
        assert not await is_pass_running(conn)  # ... but no process holds it
    async with context_for(settings) as context:
        result = await poll_once(context)
    assert result.ran
    assert result.ok
    assert result.stored == 5
    async with engine.connect() as conn:
        lease = (await conn.execute(select(PollerState.lease_owner, PollerState.lease_until))).one()
    assert tuple(lease) == (None, None)  # released by the pass that took it over


async def a_dead_pid() -> int:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await process.wait()
    return process.pid


async def lease_to(engine: AsyncEngine, owner: str) -> None:
    until_ = datetime.now(UTC) + timedelta(minutes=10)
    async with engine.begin() as conn:
        await conn.execute(update(PollerState).values(lease_owner=owner, lease_until=until_))


@sqlite_only
async def test_only_a_dead_process_on_this_host_loses_its_lease_early(
    poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    dead, host, token = await a_dead_pid(), owners.host_id(), uuid.uuid4().hex
    dead_here = f"{token}:{dead}:{host}"
    alive = [
        token,  # the old format, without a pid: alive until it expires
        f"{token}:{dead}:{'0' * len(host)}",  # another host: its pids are not ours to check
        f"{token}:1:{host}",  # a process that exists
        f"{token}:not-a-pid:{host}",
    ]
    async with engine.begin() as conn:
        await ensure_state(conn)
    async with context_for(poller_settings()) as context:
        for owner in alive:
            await lease_to(context.engine, owner)
            assert not (await poll_once(context)).ran, owner
            async with engine.connect() as conn:
                assert await is_pass_running(conn), owner
                assert await conn.scalar(select(PollerState.lease_owner)) == owner
        await lease_to(context.engine, dead_here)
        assert (await poll_once(context)).ran
