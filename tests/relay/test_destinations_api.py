"""The destinations admin API: CRUD, validation, write-only secrets, and destinations from the environment."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.delivery import deliver_once
from app.destinations import DestinationSpec, env_destination_specs, sync_env_destinations
from app.models import Destination
from tests.conftest import READ_TOKEN, LiveServer
from tests.factories import make_event
from tests.relay.conftest import add_destination, ingest
from tests.relay.receiver import Answer, Receiver

SECRET_AUTH = "Bearer very-secret-authorization-value"
SECRET_SIGNING = "signing-secret-that-nobody-may-read"
GRACE = timedelta(days=1)


async def test_crud_round_trip(api: httpx.AsyncClient) -> None:
    created = await add_destination(api, "https://hooks.example.com/in", types=["f", "fp"], categories=[])
    assert created["name"] == "hook"
    assert created["kind"] == "http"
    assert created["origin"] == "api"
    assert (created["send_as_batch"], created["batch_size"], created["concurrent_calls"]) == (True, 100, 5)
    assert created["types"] == ["f", "fp"]
    assert created["enabled"] is True

    patched = await api.patch(f"/api/destinations/{created['id']}", json={"enabled": False, "batch_size": 10})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["enabled"], patched.json()["batch_size"]) == (False, 10)

    listed = (await api.get("/api/destinations")).json()
    assert [d["id"] for d in listed] == [created["id"]]
    one = (await api.get(f"/api/destinations/{created['id']}")).json()
    assert one["health"]["backlog"] == 0
    assert one["health"]["status"] == "ok"

    assert (await api.delete(f"/api/destinations/{created['id']}")).status_code == 204
    assert (await api.get(f"/api/destinations/{created['id']}")).status_code == 404
    assert (await api.delete(f"/api/destinations/{created['id']}")).status_code == 404


async def test_default_filter_is_failures(api: httpx.AsyncClient) -> None:
    created = await add_destination(api, "http://127.0.0.1:9/x")
    assert created["categories"] == ["failure"]
    assert created["types"] == []


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "example.com/hook"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "http://hooks.example.com:abc/"}, "url"),
        ({"url": "http://hooks.example.com:99999/"}, "url"),
        ({"url": "http://:80/hook"}, "url"),
        ({"url": "http://hooks\u00a0example.com/"}, "url"),
        ({"url": "https://hooks.example.com/in\n"}, "url"),
        ({"authorization": "Bearer café"}, "authorization"),
        ({"authorization": "Bearer a\r\nX-Evil: 1"}, "authorization"),
        ({"authorization": "Bearer trailing-space "}, "authorization"),
        ({"authorization": " Bearer leading-space"}, "authorization"),
        ({"authorization": "Bearer tab\there"}, "authorization"),
        ({"types": ["nope"]}, "types"),
        ({"categories": ["failures"]}, "categories"),
        ({"payload": "xml"}, "payload"),
        ({"kind": "email"}, "kind"),
        ({"batch_size": 0}, "batch_size"),
        ({"concurrent_calls": 101}, "concurrent_calls"),
        ({"signing_secret": "short"}, "signing_secret"),
        ({"signing_secret": "whsec_!!!not base64!!!"}, "signing_secret"),
    ],
)
async def test_bad_fields_are_refused_with_422(
    api: httpx.AsyncClient, fields: dict[str, Any], parameter: str
) -> None:
    body = {"name": "x", "url": "https://example.com/hook"} | fields
    response = await api.post("/api/destinations", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"
    assert parameter in {p["parameter"] for p in response.json()["detail"]}
    if parameter == "authorization":  # the answer names the field, never the value
        assert fields["authorization"].split()[-1] not in response.text
    assert (await api.get("/api/destinations")).json() == []


async def test_patch_validates_too(api: httpx.AsyncClient) -> None:
    created = await add_destination(api, "https://example.com/hook")
    response = await api.patch(f"/api/destinations/{created['id']}", json={"url": "gopher://x"})
    assert response.status_code == 422
    response = await api.patch(f"/api/destinations/{created['id']}", json={"authorization": "Bearer x\n"})
    assert response.status_code == 422
    assert (await api.patch("/api/destinations/999", json={"enabled": False})).status_code == 404


@pytest.mark.parametrize(
    "field", ["name", "url", "kind", "payload", "send_as_batch", "batch_size", "concurrent_calls", "enabled"]
)
async def test_patch_refuses_null_for_a_field_that_needs_a_value(api: httpx.AsyncClient, field: str) -> None:
    created = await add_destination(api, "https://example.com/hook")
    response = await api.patch(f"/api/destinations/{created['id']}", json={field: None})
    assert response.status_code == 422, response.text
    assert response.json() == {
        "error": "invalid_request",
        "detail": [{"parameter": field, "message": "may not be null"}],
    }
    assert (await api.get(f"/api/destinations/{created['id']}")).json()["enabled"] is True


async def test_patch_null_clears_secrets_and_filters(api: httpx.AsyncClient) -> None:
    created = await add_destination(api, "https://example.com/hook", authorization="Bearer x", types=["f"])
    body = {"authorization": None, "types": None, "categories": None, "api_endpoints": None}
    cleared = await api.patch(f"/api/destinations/{created['id']}", json=body)
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["has_authorization"], cleared.json()["types"], cleared.json()["categories"]) == (
        False,
        [],
        [],
    )


async def test_credentials_in_a_url_are_masked(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, service_logs: pytest.LogCaptureFixture
) -> None:
    url = "https://alice:s3cr3t-pass@hooks.example.com/in?token=abc123secret&v=1#frag"
    shown = "https://***@hooks.example.com/in?token=***&v=***#***"
    created = await add_destination(api, url, name="creds")
    assert created["url"] == shown
    patched = await api.patch(f"/api/destinations/{created['id']}", json={"batch_size": 5})
    assert patched.json()["url"] == shown
    assert (await api.get("/api/destinations")).json()[0]["url"] == shown
    slack = await add_destination(
        api, "https://hooks.slack.com/services/T0/B0/XyZsecret", name="s", kind="slack"
    )
    assert slack["url"] == "https://hooks.slack.com/…"

    # Sent with its credentials; shown and logged without them.
    port = receiver.url.split(":")[-1].split("/")[0]
    local = f"http://bob:p4ss-word@127.0.0.1:{port}/hook?token=abc123secret"
    await api.patch(f"/api/destinations/{created['id']}", json={"url": local})
    receiver.answer(Answer(500, body=b"down"))
    await ingest(api, [make_event()])
    await deliver_once(relay.context)
    assert receiver.requests[0].headers["authorization"].startswith("Basic ")
    for text in [(await api.get(f"/api/destinations/{created['id']}")).text, service_logs.text]:
        for secret in ("s3cr3t-pass", "p4ss-word", "abc123secret", "XyZsecret"):
            assert secret not in text


async def test_names_are_unique(api: httpx.AsyncClient) -> None:
    first = await add_destination(api, "https://example.com/a", name="a")
    await add_destination(api, "https://example.com/b", name="b")
    assert (await api.post("/api/destinations", json={"name": "a", "url": "https://x.io"})).status_code == 409
    renamed = await api.patch(f"/api/destinations/{first['id']}", json={"name": "b"})
    assert renamed.status_code == 409


async def test_secrets_are_write_only_and_never_logged(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Our own loggers at DEBUG; third-party drivers at INFO (aiosqlite logs SQL parameters at DEBUG).
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="app")
    created = await add_destination(
        api, receiver.url, authorization=SECRET_AUTH, signing_secret=SECRET_SIGNING
    )
    receiver.answer(Answer(500, body=b"receiver broke"))
    await ingest(api, [make_event()])
    await deliver_once(relay.context)  # a failed delivery is logged: without its headers
    assert "delivery failed" in caplog.text
    assert receiver.requests[0].headers["authorization"] == SECRET_AUTH
    assert created["has_authorization"] is True
    assert created["has_signing_secret"] is True
    answers = [
        (await api.get("/api/destinations")).text,
        (await api.get(f"/api/destinations/{created['id']}")).text,
        (await api.patch(f"/api/destinations/{created['id']}", json={"batch_size": 5})).text,
    ]
    for text in answers:
        assert SECRET_AUTH not in text
        assert SECRET_SIGNING not in text
        assert 'authorization"' not in text.replace('has_authorization"', "")
    cleared = await api.patch(f"/api/destinations/{created['id']}", json={"authorization": None})
    assert cleared.json()["has_authorization"] is False
    assert cleared.json()["has_signing_secret"] is True
    assert SECRET_AUTH not in caplog.text
    assert SECRET_SIGNING not in caplog.text


async def test_admin_token_is_required(relay: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as anonymous:
        for method, path in [
            ("GET", "/api/destinations"),
            ("POST", "/api/destinations"),
            ("GET", "/api/destinations/1"),
            ("PATCH", "/api/destinations/1"),
            ("DELETE", "/api/destinations/1"),
            ("POST", "/api/destinations/1/replay"),
            ("POST", "/api/destinations/1/retry-dead"),
            ("POST", "/api/destinations/1/retry-failed"),
            ("GET", "/api/deliveries"),
            ("POST", "/api/deliveries/1/retry"),
        ]:
            assert (await anonymous.request(method, path)).status_code == 401
            reader = await anonymous.request(method, path, headers={"Authorization": READ_TOKEN})
            assert reader.status_code == 403
            assert reader.json()["detail"] == "this token is the API_TOKEN; this route takes the ADMIN_TOKEN"


def test_env_settings_become_specs(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        forward_url="https://siem.example.com/in",
        forward_authorization="Basic abc",
        forward_types="failure,s,warning",
        forward_send_as_batch=False,
        forward_batch_size=50,
        forward_concurrent_calls=2,
        forward_signing_secret=SECRET_SIGNING,
        slack_incoming_webhook_url="https://hooks.slack.com/services/T/B/X",
    )
    forward, slack = env_destination_specs(settings)
    assert forward == DestinationSpec(
        name="forward",
        url="https://siem.example.com/in",
        authorization="Basic abc",
        signing_secret=SECRET_SIGNING,
        types=["s"],
        categories=["failure", "warning"],
        send_as_batch=False,
        batch_size=50,
        concurrent_calls=2,
    )
    assert (slack.name, slack.kind, slack.categories) == ("slack", "slack", ["failure"])
    assert env_destination_specs(make_settings()) == []


async def test_env_sync_upserts_by_name_and_disables_removed(engine: AsyncEngine) -> None:
    first = [
        DestinationSpec(name="forward", url="https://a.example.com"),
        DestinationSpec("slack", "https://s", "slack"),
    ]
    async with engine.begin() as conn:
        await sync_env_destinations(conn, first, GRACE)
    async with engine.begin() as conn:
        await sync_env_destinations(
            conn, [DestinationSpec(name="forward", url="https://b.example.com", batch_size=7)], GRACE
        )

    async with engine.connect() as conn:
        rows = {r.name: r for r in await conn.execute(select(Destination))}
    assert set(rows) == {"forward", "slack"}
    assert (rows["forward"].url, rows["forward"].batch_size, rows["forward"].enabled) == (
        "https://b.example.com",
        7,
        True,
    )
    assert rows["slack"].enabled is False
    assert rows["slack"].origin == "env"

    async with engine.begin() as conn:
        await sync_env_destinations(conn, first, GRACE)
    async with engine.connect() as conn:
        assert await conn.scalar(select(Destination.enabled).where(Destination.name == "slack")) is True


async def test_start_up_creates_the_forward_destination(
    make_settings: Callable[..., Settings], start_server: Callable[..., Any]
) -> None:
    live = await start_server(make_settings(forward_url="https://siem.example.com/in", forward_types="f,fp"))
    async with httpx.AsyncClient(
        base_url=live.base_url, headers={"Authorization": "admin-token-for-tests"}
    ) as api:
        [forward] = (await api.get("/api/destinations")).json()
    assert (forward["name"], forward["origin"], forward["types"], forward["categories"]) == (
        "forward",
        "env",
        ["f", "fp"],
        [],
    )


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("forward_signing_secret", "short-secret", "at least 16 characters"),
        ("forward_signing_secret", "whsec_short!!-secret", "base64"),
        # Spaces and line breaks around a value are trimmed, as around every setting; inside, refused.
        ("forward_authorization", "Bearer tab\tsecret", "visible ASCII"),
        ("authorization", "Basic line\nbreak-secret", "visible ASCII"),
    ],
)
def test_settings_hooks_refuse_a_bad_secret_by_name(setting: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, **{setting: value})  # type: ignore[call-arg]
    [error] = raised.value.errors()
    assert error["loc"] == (setting,)
    assert message in error["msg"]
    assert value.split()[-1] not in error["msg"]
    good = Settings(
        _env_file=None,  # type: ignore[call-arg]
        forward_signing_secret=SECRET_SIGNING,
        forward_authorization="Bearer x",
        authorization="",
    )
    assert good.forward_signing_secret is not None


def test_env_destinations_are_checked_like_the_api(make_settings: Callable[..., Settings]) -> None:
    # The settings refuse the value at start; the destination spec checks it again, as the API does.
    with pytest.raises(ValidationError, match="forward_authorization") as info:
        make_settings(forward_url="https://siem.example.com/in", forward_authorization="Bearer x\r\ny")
    assert "Bearer x" not in str(info.value)
    settings = make_settings(forward_url="https://siem.example.com/in").model_copy(
        update={"forward_authorization": SecretStr("Bearer x\r\n")}
    )
    with pytest.raises(ValueError, match="destination 'forward', authorization: must be visible ASCII"):
        env_destination_specs(settings)
