"""Requests that cannot be sent, log ids that are not header values, and secrets in error texts."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from app.delivery import deliver_once
from app.models import Destination, OutboxItem
from tests.conftest import LiveServer
from tests.factories import make_event
from tests.relay.conftest import add_destination, deliver_all, ingest, statuses
from tests.relay.receiver import Answer, Receiver

SECRET = "sk_live_TOPSECRET"
SIGNING = "whsec_" + "c2lnbmluZy1zZWNyZXQtb2YtMzItYnl0ZXMhISEhISE="


async def store_as_an_older_version_did(engine: AsyncEngine, destination_id: int, **values: Any) -> None:
    """Values the API refuses now, as a database written before that check may hold them."""
    async with engine.begin() as conn:
        await conn.execute(update(Destination).where(Destination.id == destination_id).values(**values))


async def assert_never_shown(api: httpx.AsyncClient, destination_id: int, *secrets: str) -> None:
    answers = [
        await api.get("/api/destinations"),
        await api.get(f"/api/destinations/{destination_id}"),
        await api.get("/api/deliveries"),
    ]
    for answer in answers:
        assert answer.status_code == 200
        for secret in secrets:
            assert secret not in answer.text


async def test_log_ids_that_are_not_header_values_are_sent_under_a_digest(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, engine: AsyncEngine
) -> None:
    await add_destination(api, receiver.url, send_as_batch=False, concurrent_calls=1, signing_secret=SIGNING)
    plain = make_event()
    odd = [make_event(log_id="ünïcode-1"), make_event(log_id="9002026\nnewline"), make_event(log_id="a b")]
    await ingest(api, [plain, *odd])

    assert await deliver_all(relay.context) == 4
    assert sorted(e["log_id"] for e in receiver.events()) == sorted(e["log_id"] for e in [plain, *odd])
    ids = {r.json()["log_id"]: r.headers["webhook-id"] for r in receiver.requests}
    assert ids[plain["log_id"]] == plain["log_id"]  # a plain id is sent as it is
    hashed = [ids[e["log_id"]] for e in odd]
    assert all(h.startswith("evt_") and h.isascii() and h.isprintable() for h in hashed)
    assert len(set(hashed)) == 3
    for request in receiver.requests:
        Webhook(SIGNING).verify(request.body, request.headers)
    async with engine.connect() as conn:
        attempts = set(await conn.scalars(select(OutboxItem.attempts)))
    assert attempts == {1}  # each sent once: nothing retried, nothing blocked


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("authorization", f"Bearer {SECRET}é", "the Authorization value is not a valid header value"),
        (
            "authorization",
            f"Bearer {SECRET}\r\nX-Evil: 1",
            "the Authorization value is not a valid header value",
        ),
        ("authorization", f"Bearer {SECRET} ", "the Authorization value is not a valid header value"),
        ("url", "http://127.0.0.1:abc/hook", "the URL is not valid"),
        ("url", "http://127.0.0.1\u00a0/hook", "the URL is not valid"),
    ],
)
async def test_a_request_that_cannot_be_built_is_a_dead_letter_with_its_reason(
    relay: LiveServer,
    api: httpx.AsyncClient,
    receiver: Receiver,
    engine: AsyncEngine,
    service_logs: pytest.LogCaptureFixture,
    field: str,
    value: str,
    reason: str,
) -> None:
    destination = await add_destination(api, receiver.url, send_as_batch=False, concurrent_calls=2)
    await store_as_an_older_version_did(engine, destination["id"], **{field: value})
    await ingest(api, [make_event() for _ in range(3)])

    assert await deliver_all(relay.context) == 3  # settled at once: never leased again, never retried
    assert len(receiver.requests) == 0
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 0, "dead": 3}
    dead = (await api.get("/api/deliveries", params={"status": "dead"})).json()["items"]
    assert {d["attempts"] for d in dead} == {1}
    assert len({d["last_error"] for d in dead}) == 1
    assert dead[0]["last_error"].startswith(f"cannot send: {reason} (")
    health = (await api.get(f"/api/destinations/{destination['id']}")).json()["health"]
    assert health["last_error"] == dead[0]["last_error"]
    await assert_never_shown(api, destination["id"], SECRET)
    assert SECRET not in service_logs.text


async def test_a_receiver_that_echoes_the_secrets_back_does_not_reveal_them(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, service_logs: pytest.LogCaptureFixture
) -> None:
    token = "query-token-0123"
    destination = await add_destination(
        api, f"{receiver.url}?token={token}", authorization=f"Bearer {SECRET}", signing_secret=SIGNING
    )
    await ingest(api, [make_event()])
    echo = f"refused: Authorization=Bearer {SECRET}, url token {token}, key {SIGNING}".encode()
    receiver.answer(Answer(400, body=echo))
    await deliver_once(relay.context)

    [row] = (await api.get("/api/deliveries")).json()["items"]
    assert row["last_error"] == "HTTP 400: refused: Authorization=***, url token ***, key ***"
    await assert_never_shown(api, destination["id"], SECRET, token, SIGNING)
    for secret in (SECRET, token, SIGNING):
        assert secret not in service_logs.text


# The timeout must only ever end the stalled body: the status line comes well within it.
@pytest.mark.parametrize("relay", [{"delivery_timeout": 2.0}], indirect=True)
async def test_a_2xx_whose_answer_stalls_is_delivered_not_sent_again(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    destination = await add_destination(api, receiver.url)
    await ingest(api, [make_event()])
    stalled = asyncio.Event()  # the rest of the body comes only after the delivery timed out
    receiver.answer(Answer(200, body=b"accepted, slowly", stall=stalled))  # the receiver took it
    try:
        assert await deliver_all(relay.context) == 1
    finally:
        stalled.set()
    assert len(receiver.requests) == 1
    assert (await statuses(api, destination["id"]))["delivered"] == 1


async def test_the_authorization_setting_wins_over_credentials_in_the_url(
    api: httpx.AsyncClient, relay: LiveServer, receiver: Receiver
) -> None:
    url = receiver.url.replace("http://", "http://url-user:url-password-0123@")
    await add_destination(api, url, authorization=f"Bearer {SECRET}")
    await ingest(api, [make_event()])
    await deliver_all(relay.context)
    assert receiver.requests[0].headers["authorization"] == f"Bearer {SECRET}"


async def test_echoed_url_credentials_are_masked(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, service_logs: pytest.LogCaptureFixture
) -> None:
    url = receiver.url.replace("http://", "http://url-user-0123:url-password-4567@")
    destination = await add_destination(api, url)
    await ingest(api, [make_event()])
    receiver.default = Answer(400)
    await deliver_all(relay.context)
    basic = receiver.requests[0].headers["authorization"]  # httpx made it of the URL's credentials
    receiver.default = Answer(400, body=f"refused {basic} for url-user-0123".encode())
    await api.post(f"/api/destinations/{destination['id']}/retry-dead")
    await deliver_all(relay.context)

    [row] = (await api.get("/api/deliveries")).json()["items"]
    assert row["last_error"] == "HTTP 400: refused *** for ***"
    for secret in ("url-password-4567", basic.removeprefix("Basic "), "url-user-0123"):
        await assert_never_shown(api, destination["id"], secret)
        assert secret not in service_logs.text


async def test_echoed_credentials_are_masked_as_they_were_sent(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, service_logs: pytest.LogCaptureFixture
) -> None:
    """Percent-escapes: Basic credentials are made of the decoded password, and the query goes out
    as it is written."""
    url = receiver.url.replace("http://", "http://alice:p%40ss%21word@") + "?token=abc%2Fdef%2B0123"
    destination = await add_destination(api, url)
    await ingest(api, [make_event()])
    receiver.default = Answer(400, body=b"refused", echo=True)
    await deliver_all(relay.context)

    [request] = receiver.requests
    credentials = request.headers["authorization"].removeprefix("Basic ")
    assert base64.b64decode(credentials) == b"alice:p@ss!word"
    [row] = (await api.get("/api/deliveries")).json()["items"]
    assert row["last_error"] == "HTTP 400: refused /hook?token=*** ***"
    for secret in (credentials, "p@ss!word", "p%40ss%21word", "abc%2Fdef%2B0123", "abc/def+0123"):
        await assert_never_shown(api, destination["id"], secret)
        assert secret not in service_logs.text


async def test_an_echoed_authorization_credential_is_masked_without_its_scheme(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    destination = await add_destination(api, receiver.url, authorization=f"Bearer {SECRET}")
    await ingest(api, [make_event()])
    receiver.answer(Answer(401, body=f"unknown token {SECRET}".encode()))
    await deliver_all(relay.context)
    [row] = (await api.get("/api/deliveries")).json()["items"]
    assert row["last_error"] == "HTTP 401: unknown token ***"
    await assert_never_shown(api, destination["id"], SECRET)


async def test_an_echoed_slack_webhook_path_is_masked(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, service_logs: pytest.LogCaptureFixture
) -> None:
    path = "/services/T0SECRET1/B0SECRET2/SLACKTOKEN3456"  # a Slack webhook's path is its token
    destination = await add_destination(api, receiver.url + path, kind="slack")
    await ingest(api, [make_event(type="f")])
    receiver.default = Answer(404, body=f"no such hook: {path}".encode())
    await deliver_all(relay.context)

    [row] = (await api.get("/api/deliveries")).json()["items"]
    assert row["last_error"] == "HTTP 404: no such hook: /services/***/***/***"
    for secret in ("T0SECRET1", "B0SECRET2", "SLACKTOKEN3456"):
        await assert_never_shown(api, destination["id"], secret)
        assert secret not in service_logs.text


# The timeout must only ever end the stalled body: the status line comes well within it.
@pytest.mark.parametrize("relay", [{"delivery_timeout": 2.0, "delivery_backoff_max": 600.0}], indirect=True)
@pytest.mark.parametrize(
    ("code", "headers", "status"), [(400, {}, "dead"), (503, {"retry-after": "120"}, "failed")]
)
async def test_an_answer_whose_body_stalls_keeps_its_status_and_headers(
    relay: LiveServer,
    api: httpx.AsyncClient,
    receiver: Receiver,
    engine: AsyncEngine,
    code: int,
    headers: dict[str, str],
    status: str,
) -> None:
    """A 400 is a rejection and a 503's Retry-After is honoured, even when the rest of the body
    never comes: what did come is the excerpt."""
    await add_destination(api, receiver.url)
    await ingest(api, [make_event()])
    stalled = asyncio.Event()  # the rest of the body comes only after the delivery timed out
    receiver.answer(Answer(code, headers, body=b"rejected: bad payload", stall=stalled))
    try:
        assert await deliver_once(relay.context) == 1
    finally:
        stalled.set()
    async with engine.connect() as conn:
        row = (await conn.execute(select(OutboxItem))).one()
    assert (row.status, row.last_status_code, row.last_error) == (status, code, f"HTTP {code}: r")
    if status == "failed":
        assert row.next_attempt_at - row.last_attempt_at >= timedelta(seconds=120)
