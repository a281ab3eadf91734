"""Batch and single modes, headers, payload shapes and signatures, against a real receiver."""

from __future__ import annotations

import base64

import httpx
import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app import __version__
from tests.conftest import LiveServer
from tests.factories import make_event
from tests.relay.conftest import add_destination, deliver_all, ingest, statuses
from tests.relay.receiver import Receiver


async def test_batch_mode_posts_arrays_of_stored_events(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    destination = await add_destination(
        api, receiver.url, batch_size=3, authorization="Basic dm9yZGVsOnZvcmRlbA=="
    )
    failures = [make_event(type="f") for _ in range(7)]
    await ingest(api, [*failures, make_event(type="s")])  # a success is not a failure: not queued

    assert await deliver_all(relay.context) == 7
    assert [len(r.json()) for r in receiver.requests] == [3, 3, 1]
    assert sorted(e["log_id"] for e in receiver.events()) == sorted(e["log_id"] for e in failures)
    assert receiver.events()[0] == failures[0]  # the stored data, as it came in
    first = receiver.requests[0].headers
    assert first["content-type"] == "application/json"
    assert first["user-agent"] == f"logrelay/{__version__}"
    assert first["authorization"] == "Basic dm9yZGVsOnZvcmRlbA=="  # verbatim
    assert first["webhook-id"].startswith("batch_")
    assert first["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in first  # no secret, no signature
    assert await statuses(api, destination["id"]) == {"pending": 0, "failed": 0, "delivered": 7, "dead": 0}


async def test_single_mode_posts_one_object_per_event(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    await add_destination(api, receiver.url, send_as_batch=False, types=["fp"], categories=[])
    wanted = [make_event(type="fp") for _ in range(4)]
    await ingest(api, [*wanted, make_event(type="f")])

    assert await deliver_all(relay.context) == 4
    assert len(receiver.requests) == 4
    bodies = [r.json() for r in receiver.requests]
    assert all(isinstance(b, dict) for b in bodies)
    assert sorted(b["log_id"] for b in bodies) == sorted(e["log_id"] for e in wanted)
    for request in receiver.requests:
        assert request.headers["webhook-id"] == request.json()["log_id"]
        assert "authorization" not in request.headers


@pytest.mark.parametrize(
    "secret", ["whsec_" + base64.b64encode(b"k" * 32).decode(), "a plain shared secret!"]
)
async def test_signatures_verify_with_standardwebhooks(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, secret: str
) -> None:
    created = await add_destination(api, receiver.url, signing_secret=secret, batch_size=2)
    assert "signing_secret" not in created
    assert created["has_signing_secret"] is True
    await ingest(api, [make_event() for _ in range(3)])
    await deliver_all(relay.context)

    # A whsec_ secret is used as the standard says; any other string as its UTF-8 bytes.
    verifier = Webhook(secret) if secret.startswith("whsec_") else Webhook(secret.encode())
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        assert verifier.verify(request.body, request.headers) == orjson.loads(request.body)
        with pytest.raises(WebhookVerificationError):
            Webhook(base64.b64encode(b"another key of 32 bytes........").decode()).verify(
                request.body, request.headers
            )
        tampered = request.body.replace(b"f", b"g", 1)
        with pytest.raises(WebhookVerificationError):
            verifier.verify(tampered, request.headers)


async def test_payload_shapes_of_the_old_extensions(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    details = {"request": {"method": "post", "path": "/api/v2/users"}, "response": {"statusCode": 201}}
    event = make_event(type="sapi", details=details)
    await add_destination(
        api, receiver.url, name="mgmt", payload="mgmt_webhook", types=["sapi"], categories=[]
    )
    await add_destination(
        api, receiver.url, name="auth", payload="raw", types=["sapi"], categories=[], send_as_batch=False
    )
    await ingest(api, [event])
    await deliver_all(relay.context)

    bodies = {("list" if isinstance(r.json(), list) else "object"): r for r in receiver.requests}
    assert bodies["list"].json() == [{"date": event["date"], **details}]
    assert bodies["object"].json() == event
    assert bodies["object"].headers["webhook-id"] == event["log_id"]  # the id travels in the header


async def test_api_endpoint_filter_applies_at_ingest(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    def sapi(path: str) -> dict[str, object]:
        return make_event(type="sapi", details={"request": {"path": path}, "response": {}})

    users, other = sapi("/api/v2/users/abc"), sapi("/api/v2/users-by-email")
    await add_destination(
        api, receiver.url, types=["sapi"], categories=[], api_endpoints=["users"], payload="raw"
    )
    await ingest(api, [users, other])
    await deliver_all(relay.context)
    assert receiver.events() == [users]


async def test_a_batch_destination_always_sends_an_array(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    await add_destination(api, receiver.url, send_as_batch=True, batch_size=1)
    events = [make_event() for _ in range(3)]
    await ingest(api, events)
    assert await deliver_all(relay.context) == 3
    assert [r.json() for r in receiver.requests] == [[e] for e in events]
    assert all(r.headers["webhook-id"].startswith("batch_") for r in receiver.requests)
