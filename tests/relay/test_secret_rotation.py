"""Signing-secret rotation: the secret a new one replaces goes on signing beside it for a grace
period (Standard Webhooks: several space-separated signatures), so receivers switch over safely."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook, WebhookVerificationError

from app.destinations import DestinationSpec, forget_expired_secrets, sync_env_destinations
from app.models import Destination
from tests.conftest import LiveServer
from tests.factories import make_event
from tests.relay.conftest import add_destination, deliver_all, ingest
from tests.relay.receiver import Receiver

OLD = "the-old-signing-secret-of-this-hook"
NEW = "the-new-signing-secret-of-this-hook"
LEAKED_REPLACEMENT = "a-third-secret-after-a-leak-of-new"


def accepting(receiver: Receiver) -> set[str]:
    """The secrets with which a Standard Webhooks verifier accepts every request received."""
    accepted = set()
    for secret in (OLD, NEW, LEAKED_REPLACEMENT):
        verifier = Webhook(secret.encode())
        try:
            for request in receiver.requests:
                assert verifier.verify(request.body, request.headers) == orjson.loads(request.body)
        except WebhookVerificationError:
            continue
        accepted.add(secret)
    return accepted


async def send_one(relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver) -> None:
    receiver.requests.clear()
    await ingest(api, [make_event(type="f")])
    assert await deliver_all(relay.context) == 1
    assert len(receiver.requests) == 1


async def patch(api: httpx.AsyncClient, destination_id: int, **fields: Any) -> dict[str, Any]:
    response = await api.patch(f"/api/destinations/{destination_id}", json=fields)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert not {OLD, NEW} & set(response.text.split('"'))
    assert "previous_signing_secret" not in answer
    return answer


async def test_a_new_secret_signs_beside_the_old_one_for_the_grace(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await add_destination(api, receiver.url, signing_secret=OLD)
    assert created["previous_secret_expires_at"] is None
    await send_one(relay, api, receiver)
    assert accepting(receiver) == {OLD}

    before = datetime.now(UTC)
    rotated = await patch(api, created["id"], signing_secret=NEW)
    until = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert before + timedelta(days=1) <= until <= datetime.now(UTC) + timedelta(days=1)
    await send_one(relay, api, receiver)
    assert len(receiver.requests[0].headers["webhook-signature"].split(" ")) == 2
    assert accepting(receiver) == {NEW, OLD}

    # The same secret again (a start-up re-applying it, a retried PATCH) neither ends nor extends it.
    again = await patch(api, created["id"], signing_secret=NEW)
    assert again["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]

    # A leak: the replacement with a grace of 0 cuts the leaked secret off at once.
    cut = await patch(api, created["id"], signing_secret=LEAKED_REPLACEMENT, signing_secret_grace=0)
    assert cut["previous_secret_expires_at"] is None
    await send_one(relay, api, receiver)
    assert accepting(receiver) == {LEAKED_REPLACEMENT}


async def test_the_old_secret_stops_signing_when_its_grace_ends_and_is_then_forgotten(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await add_destination(api, receiver.url, signing_secret=OLD)
    await patch(api, created["id"], signing_secret=NEW, signing_secret_grace="PT1H")
    engine = relay.context.engine
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with engine.begin() as conn:
        await conn.execute(update(Destination).values(previous_secret_expires_at=past))
    await send_one(relay, api, receiver)
    assert accepting(receiver) == {NEW}

    async with engine.begin() as conn:
        await forget_expired_secrets(conn, datetime.now(UTC))
    async with engine.connect() as conn:
        row = (await conn.execute(select(Destination))).one()
    assert row.signing_secret == NEW
    assert (row.previous_signing_secret, row.previous_secret_expires_at) == (None, None)


async def test_removing_the_secret_ends_signing_and_any_rotation(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await add_destination(api, receiver.url, signing_secret=OLD)
    await patch(api, created["id"], signing_secret=NEW)
    cleared = await patch(api, created["id"], signing_secret=None)
    assert (cleared["has_signing_secret"], cleared["previous_secret_expires_at"]) == (False, None)
    await send_one(relay, api, receiver)
    assert "webhook-signature" not in receiver.requests[0].headers


@pytest.mark.parametrize(
    "fields",
    [
        {"signing_secret_grace": 60},  # a grace rotates to nothing
        {"signing_secret": NEW, "signing_secret_grace": -1},
        {"signing_secret": NEW, "signing_secret_grace": "P31D"},
        {"signing_secret": NEW, "signing_secret_grace": "soon"},
    ],
)
async def test_a_bad_grace_is_refused_by_name(api: httpx.AsyncClient, fields: dict[str, Any]) -> None:
    created = await add_destination(api, "https://hooks.example.com/in", signing_secret=OLD)
    response = await api.patch(f"/api/destinations/{created['id']}", json=fields)
    assert response.status_code == 422, response.text
    assert "signing_secret_grace" in response.text
    assert not {OLD, NEW} & set(response.text.split('"'))


async def test_a_changed_forward_signing_secret_rotates_at_start_up(engine: AsyncEngine) -> None:
    def spec(secret: str) -> list[DestinationSpec]:
        return [DestinationSpec(name="forward", url="https://siem.example.com/in", signing_secret=secret)]

    async def row() -> Any:
        columns = (Destination.signing_secret, Destination.previous_signing_secret)
        async with engine.connect() as conn:
            return (await conn.execute(select(*columns, Destination.previous_secret_expires_at))).one()

    grace = timedelta(hours=6)
    async with engine.begin() as conn:
        await sync_env_destinations(conn, spec(OLD), grace)
    assert (await row()).previous_signing_secret is None

    before = datetime.now(UTC)
    async with engine.begin() as conn:
        await sync_env_destinations(conn, spec(NEW), grace)
    rotated = await row()
    assert (rotated.signing_secret, rotated.previous_signing_secret) == (NEW, OLD)
    assert before + grace <= rotated.previous_secret_expires_at <= datetime.now(UTC) + grace

    async with engine.begin() as conn:  # a restart with the same setting changes nothing
        await sync_env_destinations(conn, spec(NEW), grace)
    assert await row() == rotated
