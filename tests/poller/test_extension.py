"""The old extensions' settings as a relay destination: which logs it gets, and in which shape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.delivery import deliver_once
from app.extension import DESTINATION_NAME, extension_destination_spec
from app.models import Destination, OutboxItem
from app.poller.poll import poll_once
from tests.poller.fake_auth0 import FakeAuth0, Receiver, make_logs, serve


@pytest.fixture
def webhook() -> Receiver:
    return Receiver()


@pytest.fixture
async def webhook_url(webhook: Receiver) -> AsyncIterator[str]:
    async with serve(webhook.app()) as url:
        yield f"{url}/hook"


def api_log(n: int, type_: str, path: str) -> dict[str, Any]:
    [item] = make_logs(1, first=n, type=type_)
    item["details"] = {
        "request": {"method": "patch", "path": path, "body": {"n": n}},
        "response": {"statusCode": 200, "body": {"ok": True}},
    }
    return item


async def queued_for_extension(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.scalars(
            select(OutboxItem.log_id)
            .join(Destination, Destination.id == OutboxItem.destination_id)
            .where(Destination.name == DESTINATION_NAME)
            .order_by(OutboxItem.log_id)
        )
        return list(rows)


def test_the_mode_follows_the_settings_and_conflicts_are_named(
    make_settings: Callable[..., Settings],
) -> None:
    url = "https://hooks.example.com/auth0"
    management = extension_destination_spec(
        make_settings(webhook_url=url, auth0_api_endpoints=" users, connections ")
    )
    assert management is not None
    assert (management.types, management.categories, management.payload) == (
        ["sapi", "fapi"],
        [],
        "mgmt_webhook",
    )
    assert management.api_endpoints == ["users", "connections"]

    everything = extension_destination_spec(make_settings(webhook_url=url, webhook_mode="management"))
    assert everything is not None
    assert everything.api_endpoints is None

    both = extension_destination_spec(make_settings(webhook_url=url, log_types="f,fp,s,sapi", log_level=3))
    assert both is not None
    assert (both.types, both.payload) == (["f", "fp"], "raw")

    level = extension_destination_spec(make_settings(webhook_url=url, log_level=4))
    assert level is not None
    assert set(level.types) == {
        "fcpro",
        "limit_wc",
        "limit_mu",
        "limit_ui",
        "api_limit",
        "limit_delegation",
    }
    all_types = extension_destination_spec(make_settings(webhook_url=url, webhook_mode="authentication"))
    assert all_types is not None
    assert all_types.types == []
    assert all_types.categories == []
    assert extension_destination_spec(make_settings()) is None

    problems = {
        "WEBHOOK_MODE": {"webhook_url": url},
        "LOG_TYPES and LOG_LEVEL=3 select no log type": {
            "webhook_url": url,
            "log_types": "s,ss",
            "log_level": 3,
        },
        "belong to different extensions": {
            "webhook_url": url,
            "log_types": "f",
            "auth0_api_endpoints": "users",
        },
        "unknown log type codes: nope": {"webhook_url": url, "log_types": "f,nope"},
        "AUTH0_API_ENDPOINTS applies to WEBHOOK_MODE=management": {
            "webhook_url": url,
            "webhook_mode": "authentication",
            "auth0_api_endpoints": "users",
        },
    }
    for message, overrides in problems.items():
        with pytest.raises(ValidationError, match=message):
            make_settings(**overrides)


async def test_management_mode_selects_sapi_fapi_at_or_below_each_endpoint_and_sends_the_old_payload(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    engine: AsyncEngine,
    webhook: Receiver,
    webhook_url: str,
) -> None:
    logs = [
        api_log(1, "sapi", "/api/v2/users"),
        api_log(2, "sapi", "/api/v2/users/auth0|1/roles"),
        api_log(3, "sapi", "/api/v2/users-by-email"),  # the old substring match took this one
        api_log(4, "fapi", "/api/v2/connections/con_1"),
        api_log(5, "sapi", "/api/v2/clients"),
        api_log(6, "s", "/api/v2/users"),  # not a Management API log
        api_log(7, "sapi", "/api/v2/userss"),
    ]
    fake.add(logs)
    settings = poller_settings(
        webhook_url=webhook_url,
        auth0_api_endpoints="users, connections",
        authorization="Basic dm9yZGVsOnZvcmRlbA==",
    )
    async with context_for(settings) as context:
        assert (await poll_once(context)).stored == 7
        assert await queued_for_extension(engine) == [logs[0]["_id"], logs[1]["_id"], logs[3]["_id"]]
        await deliver_once(context)
    [(_, headers, body)] = webhook.received  # SEND_AS_BATCH defaults to true: one POST, an array
    assert headers["authorization"] == "Basic dm9yZGVsOnZvcmRlbA=="
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"]
    assert body == [
        {"date": log["date"], "request": log["details"]["request"], "response": log["details"]["response"]}
        for log in (logs[0], logs[1], logs[3])
    ]


async def test_authentication_mode_sends_raw_logs_of_the_narrowed_types_one_per_request(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    engine: AsyncEngine,
    webhook: Receiver,
    webhook_url: str,
) -> None:
    types = ["f", "fp", "s", "sapi", "fcpro", "w"]
    logs = [make_logs(1, first=n + 1, type=t)[0] for n, t in enumerate(types)]
    fake.add(logs)
    settings = poller_settings(
        webhook_url=webhook_url, log_types="f,fp,s,w", log_level=3, send_as_batch=False
    )
    async with context_for(settings) as context:
        await poll_once(context)
        expected = [logs[0], logs[1]]  # in LOG_TYPES and at level 3 or above
        assert await queued_for_extension(engine) == [log["_id"] for log in expected]
        await deliver_once(context)
    received = sorted(webhook.received, key=lambda r: r[1]["webhook-id"])
    assert [body for _, _, body in received] == expected  # the raw log, as Auth0 returned it
    assert [headers["webhook-id"] for _, headers, _ in received] == [log["_id"] for log in expected]
