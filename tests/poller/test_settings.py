"""The poller's settings: AUTH0_DOMAIN normalised or refused, START_FROM a log id or a date, and
BATCH_SIZE up to the extensions' 1000 (a logs request still takes at most 100)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.extension import DESTINATION_NAME
from app.models import Destination
from app.poller.poll import poll_once
from tests.poller.fake_auth0 import FakeAuth0, make_logs
from tests.poller.support import run_poll_once


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("tenant.eu.auth0.com", "tenant.eu.auth0.com"),
        ("  Tenant.EU.Auth0.com/ ", "tenant.eu.auth0.com"),
        ("https://tenant.eu.auth0.com/", "https://tenant.eu.auth0.com"),
        ("HTTPS://Tenant.eu.auth0.com", "https://tenant.eu.auth0.com"),
        ("http://127.0.0.1:9000//", "http://127.0.0.1:9000"),
        ("http://[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_auth0_domain_is_normalised(
    make_settings: Callable[..., Settings], given: str, expected: str
) -> None:
    settings = make_settings(auth0_domain=given, auth0_client_id="a", auth0_client_secret="b")
    assert settings.auth0_domain == expected
    assert settings.auth0_base_url == (expected if "://" in expected else f"https://{expected}")


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("https://tenant.eu.auth0.com/api/v2/", "has the path '/api/v2/'"),
        ("tenant.eu.auth0.com/api/v2", "has the path '/api/v2'"),
        ("ftp://tenant.eu.auth0.com", "not an http(s) address"),
        ("https://tenant.eu.auth0.com?x=1", "query"),
        ("https://", "no valid host name"),
        ("tenant eu.auth0.com", "no valid host name"),
    ],
)
def test_a_bad_auth0_domain_is_refused(
    make_settings: Callable[..., Settings], given: str, problem: str
) -> None:
    with pytest.raises(ValidationError, match="auth0_domain") as info:
        make_settings(auth0_domain=given, auth0_client_id="a", auth0_client_secret="b")
    assert problem in str(info.value)


@pytest.mark.parametrize("given", ["last week", "12345", "9002026112", "900202611231600x"])
def test_start_from_must_be_a_log_id_or_a_date(make_settings: Callable[..., Settings], given: str) -> None:
    with pytest.raises(ValidationError, match="is neither an Auth0 log id"):
        make_settings(start_from=given)


def test_start_from_takes_real_log_ids_and_dates(make_settings: Callable[..., Settings]) -> None:
    real = "90020240308035328208838000000000000001223372052034940964"  # shared README 2.1
    assert make_settings(start_from=f" {real} ").start_from == real
    assert make_settings(start_from="2026-11-01T08:30:00Z").start_from == "2026-11-01T08:30:00Z"


async def test_bad_poller_settings_stop_logrelay_poll_naming_each(
    poller_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    code, _, err = await run_poll_once(
        poller_settings(),
        tmp_path,
        AUTH0_DOMAIN="https://tenant.eu.auth0.com/api/v2/",
        START_FROM="last week",
        BATCH_SIZE="1001",
    )
    assert code == 2
    lines = err.decode().splitlines()
    for name in ("AUTH0_DOMAIN", "START_FROM", "BATCH_SIZE"):
        assert any(line.startswith(f"logrelay: invalid setting {name}: ") for line in lines), err


async def test_a_domain_as_people_type_it_polls(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], auth0_url: str, tmp_path: Path
) -> None:
    fake.add(make_logs(3))
    code, _, err = await run_poll_once(poller_settings(), tmp_path, AUTH0_DOMAIN=f" {auth0_url.upper()}/ ")
    assert code == 0, err
    assert fake.token_requests == 1  # the audience matched


async def test_batch_size_1000_is_the_webhook_batch_and_requests_take_100(
    fake: FakeAuth0, poller_settings: Callable[..., Settings], context_for: Any, engine: AsyncEngine
) -> None:
    fake.add(make_logs(150))
    settings = poller_settings(batch_size=1000, webhook_url="https://hooks.example.com/x", log_level=3)
    async with context_for(settings) as context:
        result = await poll_once(context)
    assert result.stored == 150
    assert {r.get("take") or r.get("per_page") for r in fake.log_requests} == {"100"}
    async with engine.connect() as conn:
        batch = await conn.scalar(select(Destination.batch_size).where(Destination.name == DESTINATION_NAME))
    assert batch == 1000


@pytest.mark.parametrize(
    ("given", "level"), [("info", 1), ("WARNING", 2), (" critical ", 4), ("3", 3), ("", None)]
)
def test_log_level_takes_the_extension_numbers_or_their_names(
    make_settings: Callable[..., Settings], given: str, level: int | None
) -> None:
    # LOG_LEVEL=info is common in container environments; it must not stop logrelay from starting.
    assert make_settings(log_level=given).log_level == level


@pytest.mark.parametrize("given", ["verbose", "5", "-1"])
def test_a_log_level_that_is_neither_is_refused(make_settings: Callable[..., Settings], given: str) -> None:
    with pytest.raises(ValidationError, match="log_level"):
        make_settings(log_level=given)
