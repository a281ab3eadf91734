"""Fixtures for the poller: a fake Auth0 and a Slack receiver on real sockets, settings that point
at them, and a way to open the running context the poller uses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth0 import management
from app.config import Settings
from app.context import Context, open_context
from tests.poller.fake_auth0 import CLIENT_ID, CLIENT_SECRET, FakeAuth0, Receiver, serve


@pytest.fixture(autouse=True)
def fresh_tokens() -> None:
    """Each test starts without cached Management API tokens (fake servers reuse ports)."""
    management.TOKENS.clear()


@pytest.fixture
def fake() -> FakeAuth0:
    return FakeAuth0()


@pytest.fixture
async def auth0_url(fake: FakeAuth0) -> AsyncIterator[str]:
    async with serve(fake.app()) as url:
        yield url


@pytest.fixture
def slack() -> Receiver:
    return Receiver()


@pytest.fixture
async def slack_url(slack: Receiver) -> AsyncIterator[str]:
    async with serve(slack.app()) as url:
        yield f"{url}/slack"


@pytest.fixture
def poller_settings(
    make_settings: Callable[..., Settings], auth0_url: str, engine: AsyncEngine
) -> Callable[..., Settings]:
    """Settings for a poller against the fake Auth0 (the `engine` fixture resets PostgreSQL)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "auth0_domain": auth0_url,
            "auth0_client_id": CLIENT_ID,
            "auth0_client_secret": CLIENT_SECRET,
            "batch_size": 10,
            "poll_max_run_seconds": 60,
        }
        return make_settings(**(values | overrides))

    return make


@pytest.fixture
def context_for() -> Callable[[Settings], AbstractAsyncContextManager[Context]]:
    """`async with context_for(settings) as context:` opens what `serve`/`worker` open."""
    return open_context
