"""A destination's extra headers (an API key a receiver asks for): sent verbatim, write-only, checked."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.config import Settings
from app.delivery import deliver_once
from app.destinations import env_destination_specs
from tests.conftest import LiveServer
from tests.factories import make_event
from tests.relay.conftest import SLOW_BACKOFF, add_destination, deliver_all, ingest
from tests.relay.receiver import Answer, Receiver

API_KEY = "dd-api-key-that-nobody-may-read"
HEADERS = {"DD-API-KEY": API_KEY, "X-Environment": "prod"}


async def test_extra_headers_are_sent_with_every_request_and_shown_by_name_only(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await add_destination(
        api, receiver.url, headers=HEADERS, authorization="Bearer own", batch_size=2
    )
    assert created["header_names"] == ["DD-API-KEY", "X-Environment"]
    await ingest(api, [make_event() for _ in range(3)])
    await deliver_all(relay.context)

    assert len(receiver.requests) == 2
    for request in receiver.requests:
        assert request.headers["dd-api-key"] == API_KEY
        assert request.headers["x-environment"] == "prod"
        assert request.headers["authorization"] == "Bearer own"  # beside, not instead of, our own
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-id"].startswith("batch_")
    for answer in [
        await api.get("/api/destinations"),
        await api.get(f"/api/destinations/{created['id']}"),
        await api.patch(f"/api/destinations/{created['id']}", json={"batch_size": 5}),
    ]:
        assert API_KEY not in answer.text
        assert '"headers"' not in answer.text


async def test_patch_replaces_the_headers_and_null_or_empty_clears_them(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await add_destination(api, receiver.url, headers=HEADERS, send_as_batch=False)
    path = f"/api/destinations/{created['id']}"

    replaced = await api.patch(path, json={"headers": {"X-Api-Key": "another-key"}})
    assert replaced.json()["header_names"] == ["X-Api-Key"]
    await ingest(api, [make_event()])
    await deliver_all(relay.context)
    [request] = receiver.requests
    assert request.headers["x-api-key"] == "another-key"
    assert "dd-api-key" not in request.headers

    untouched = await api.patch(path, json={"enabled": True})  # absent: kept
    assert untouched.json()["header_names"] == ["X-Api-Key"]
    for cleared in (None, {}):
        await api.patch(path, json={"headers": {"X-Api-Key": "k"}})
        response = await api.patch(path, json={"headers": cleared})
        assert response.status_code == 200, response.text
        assert response.json()["header_names"] == []
    await ingest(api, [make_event()])
    await deliver_all(relay.context)
    assert "x-api-key" not in receiver.requests[-1].headers


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Authorization": "Bearer secret-value"}, "authorization field"),
        ({"content-type": "text/plain"}, "set by logrelay or the HTTP client"),
        ({"Host": "evil.example.com"}, "set by logrelay or the HTTP client"),
        ({"Webhook-Signature": "v1,forged"}, "set by logrelay or the HTTP client"),
        ({"Transfer-Encoding": "chunked"}, "set by logrelay or the HTTP client"),
        ({"X Api Key": "secret-value"}, "is not a header name"),
        ({"X-Api-Key:": "secret-value"}, "is not a header name"),
        ({"X-Api-Key": "secret-value\r\nX-Injected: 1"}, "visible ASCII"),
        ({"X-Api-Key": " secret-value"}, "visible ASCII"),
        ({"X-Api-Key": ""}, "visible ASCII"),
        ({"X-Api-Key": "secret-value", "x-api-key": "secret-value"}, "given twice"),
        ({f"X-{i}": "secret-value" for i in range(21)}, "at most 20 headers"),
        ({"X-Api-Key": 12345}, "valid string"),
        (["X-Api-Key", "secret-value"], "valid dictionary"),
    ],
)
async def test_bad_headers_are_refused_with_422_naming_the_field_never_the_value(
    api: httpx.AsyncClient, headers: Any, message: str
) -> None:
    response = await api.post(
        "/api/destinations", json={"name": "x", "url": "https://example.com/in", "headers": headers}
    )
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["parameter"].split(".")[0] == "headers"
    assert message in problem["message"]
    assert "secret-value" not in response.text
    assert (await api.get("/api/destinations")).json() == []


async def test_header_values_are_masked_where_a_receiver_echoes_them_and_never_logged(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="app")
    created = await add_destination(api, receiver.url, headers=HEADERS)
    receiver.answer(Answer(400, body=f"bad key {API_KEY} for prod".encode()))
    await ingest(api, [make_event()])
    await deliver_once(relay.context)

    [dead] = (await api.get("/api/deliveries", params={"destination": created["id"]})).json()["items"]
    assert dead["status"] == "dead"
    assert dead["last_error"] == "HTTP 400: bad key *** for prod"  # a short value ("prod") is not a token
    health = (await api.get(f"/api/destinations/{created['id']}")).json()["health"]
    assert API_KEY not in str(health)
    assert API_KEY not in caplog.text


@pytest.mark.parametrize("relay", [SLOW_BACKOFF], indirect=True)
async def test_changing_the_headers_ends_the_backoff(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    destination = await add_destination(api, receiver.url, headers={"X-Api-Key": "wrong-key"})
    receiver.answer(503)
    await ingest(api, [make_event()])
    await deliver_once(relay.context)
    assert await deliver_once(relay.context) == 0  # backed off for ten minutes

    fixed = await api.patch(
        f"/api/destinations/{destination['id']}", json={"headers": {"X-Api-Key": "right-key"}}
    )
    assert fixed.status_code == 200
    assert await deliver_once(relay.context) == 1  # at once
    assert receiver.requests[-1].headers["x-api-key"] == "right-key"


def test_forward_headers_setting_becomes_the_forward_destinations_headers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        forward_url="https://siem.example.com/in", forward_headers=f'{{"DD-API-KEY": "{API_KEY}"}}'
    )
    [forward] = env_destination_specs(settings)
    assert forward.headers == {"DD-API-KEY": API_KEY}
    assert API_KEY not in repr(settings)
    assert (
        env_destination_specs(make_settings(forward_url="https://x.io", forward_headers=""))[0].headers
        is None
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("DD-API-KEY: secret-value", "must be a JSON object"),
        ('["secret-value"]', "must be a JSON object"),
        ('{"Authorization": "secret-value"}', "authorization field"),
        ('{"X-Api-Key": "secret-value\\n"}', "visible ASCII"),
        ('{"X-Api-Key": 1}', "visible ASCII"),
    ],
)
def test_a_bad_forward_headers_setting_is_refused_by_name(value: str, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, forward_headers=value)  # type: ignore[call-arg]
    [error] = raised.value.errors()
    assert error["loc"] == ("forward_headers",)
    assert message in error["msg"]
    assert "secret-value" not in error["msg"]
