"""Slack destinations: readable messages, one per burst, from the API or SLACK_INCOMING_WEBHOOK_URL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from app.auth0.catalog import describe
from app.config import Settings
from app.slack import MAX_LINES, render_message
from tests.conftest import ADMIN_TOKEN, LiveServer
from tests.factories import make_event
from tests.relay.conftest import add_destination, deliver_all, ingest
from tests.relay.receiver import Receiver

FP, LEAK = describe("fp"), describe("pwd_leak")  # "Failed Login - Invalid Password", ...


async def test_a_burst_of_failures_is_one_readable_message(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    await add_destination(api, receiver.url, kind="slack", send_as_batch=False)  # Slack groups regardless
    burst = [make_event(type="fp", user_name=f"user{n}@example.com") for n in range(MAX_LINES + 5)]
    breached = make_event(type="pwd_leak", ip="203.0.113.9", client_name="Shop <beta>", description=None)
    await ingest(api, [*burst, breached])
    await deliver_all(relay.context)

    [request] = receiver.requests
    message = request.json()
    assert message["text"] == (
        f"{len(burst) + 1} Auth0 events: {FP} (fp) x{len(burst)}, {LEAK} (pwd_leak) x1"
    )
    [attachment] = message["attachments"]
    assert attachment["color"] == "#d13f42"
    lines = attachment["text"].split("\n")
    assert len(lines) == MAX_LINES + 1
    assert lines[-1] == f"…and {len(burst) + 1 - MAX_LINES} more"
    first = burst[0]
    assert lines[0] == (
        f"• *{FP}* (`fp`): Wrong email or password. · user user0@example.com"
        f" · client Default App · IP 81.2.69.143 · at 2026-11-23T10:00:00.000Z · log {first['log_id']}"
    )
    assert "webhook-id" in request.headers


def test_message_escapes_and_names_the_pieces() -> None:
    event = make_event(type="pwd_leak", client_name="Shop <beta> & co", description=None, user_name=None)
    [line] = render_message([(event["log_id"], event)])["attachments"][0]["text"].split("\n")
    assert line == (
        f"• *{LEAK}* (`pwd_leak`) · user auth0|user-1 · client Shop &lt;beta&gt; &amp; co"
        f" · IP 81.2.69.143 · at 2026-11-23T10:00:00.000Z · log {event['log_id']}"
    )


async def test_slack_url_from_the_environment(
    relay_settings: Callable[..., Settings], start_server: Callable[..., Any], receiver: Receiver
) -> None:
    live = await start_server(relay_settings(slack_incoming_webhook_url=receiver.url))
    async with httpx.AsyncClient(base_url=live.base_url, headers={"Authorization": ADMIN_TOKEN}) as api:
        [slack] = (await api.get("/api/destinations")).json()
        assert (slack["name"], slack["kind"], slack["categories"]) == ("slack", "slack", ["failure"])
        assert slack["url"] == f"http://127.0.0.1:{receiver.port}/…"  # the path is Slack's token
        await ingest(api, [make_event(type="f"), make_event(type="s")])
        await deliver_all(live.context)
    [request] = receiver.requests
    assert request.json()["text"].startswith("1 Auth0 event: Failed Login")
