"""GET /metrics for the poller: events it stored, and its state (lag, last run) from the database."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from tests.conftest import ADMIN_TOKEN, bearer, read_metrics, sample
from tests.poller.fake_auth0 import FakeAuth0, make_logs


async def test_a_pass_is_counted_and_its_state_shown(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], start_server: Any, engine: AsyncEngine
) -> None:
    items = make_logs(12)
    fake.add(items)
    server = await start_server(poller_settings())
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        before = await read_metrics(client)
        assert ("logrelay_poller_lag_seconds", frozenset()) not in before  # no checkpoint, no run yet
        assert sample(before, "logrelay_poller_running") == 0
        ran = await client.post("/api/poller/run", headers=bearer(ADMIN_TOKEN))
        assert ran.status_code == 200, ran.text
        after = await read_metrics(client)
        fake.grant_refused = True  # the next pass fails
        fake.revoke_tokens()
        assert (await client.post("/api/poller/run", headers=bearer(ADMIN_TOKEN))).json()["error"]
        failed = await read_metrics(client)

    def grew(name: str, /, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("logrelay_events_total", source="poller", outcome="stored") == 12
    assert sample(after, "logrelay_poller_running") == 0
    assert after[("logrelay_poller_last_run_failed", frozenset())] == 0
    assert failed[("logrelay_poller_last_run_failed", frozenset())] == 1
    assert abs(sample(after, "logrelay_poller_last_run_end_timestamp_seconds") - time.time()) < 60
    assert 0 <= sample(after, "logrelay_poller_lag_seconds") < 60  # caught up: the time since the run


async def test_without_auth0_settings_there_is_no_poller_state(client: httpx.AsyncClient) -> None:
    samples = await read_metrics(client)
    assert not any(name.startswith("logrelay_poller") for name, _ in samples)
