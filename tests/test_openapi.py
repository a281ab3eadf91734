"""The OpenAPI document says what the API answers: every error a route gives is documented for it,
with the shape it has (`{"error", "detail"}`), and a request body takes what the document offers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.destinations import NOT_NULL
from tests.conftest import ADMIN_TOKEN, INGEST_TOKEN, READ_TOKEN, bearer

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
NEW = {"name": "taken", "url": "https://x.example.com/in"}

# (method, path as sent, the document's path, token, JSON body or raw bytes, status answered)
ERRORS: list[tuple[str, str, str, str | None, Any, int]] = [
    ("GET", "/api/destinations/999", "/api/destinations/{destination_id}", ADMIN_TOKEN, None, 404),
    ("PATCH", "/api/destinations/999", "/api/destinations/{destination_id}", ADMIN_TOKEN, {}, 404),
    ("DELETE", "/api/destinations/999", "/api/destinations/{destination_id}", ADMIN_TOKEN, None, 404),
    (
        "POST",
        "/api/destinations/999/replay",
        "/api/destinations/{destination_id}/replay",
        ADMIN_TOKEN,
        None,
        404,
    ),
    (
        "POST",
        "/api/destinations/999/retry-dead",
        "/api/destinations/{destination_id}/retry-dead",
        ADMIN_TOKEN,
        None,
        404,
    ),
    (
        "POST",
        "/api/destinations/9/retry-failed",
        "/api/destinations/{destination_id}/retry-failed",
        ADMIN_TOKEN,
        None,
        404,
    ),
    ("POST", "/api/deliveries/999/retry", "/api/deliveries/{delivery_id}/retry", ADMIN_TOKEN, None, 404),
    ("POST", "/api/destinations", "/api/destinations", ADMIN_TOKEN, NEW, 409),
    (
        "PATCH",
        "/api/destinations/2",
        "/api/destinations/{destination_id}",
        ADMIN_TOKEN,
        {"name": "taken"},
        409,
    ),
    ("POST", "/api/poller/run", "/api/poller/run", ADMIN_TOKEN, None, 409),
    ("POST", "/api/destinations", "/api/destinations", ADMIN_TOKEN, b'{"name": "\xff"}', 422),
    ("DELETE", "/api/destinations/0", "/api/destinations/{destination_id}", ADMIN_TOKEN, None, 422),
    ("GET", "/api/deliveries?destination=1&x=1", "/api/deliveries", ADMIN_TOKEN, None, 422),
    ("GET", "/api/destinations", "/api/destinations", READ_TOKEN, None, 403),
    ("POST", "/api/poller/run", "/api/poller/run", READ_TOKEN, None, 403),
    ("POST", "/api/deliveries/1/retry", "/api/deliveries/{delivery_id}/retry", None, None, 401),
    ("GET", "/api/poller?x=1", "/api/poller", READ_TOKEN, None, 422),
    ("GET", "/metrics", "/metrics", INGEST_TOKEN, None, 403),
    ("GET", "/api/events?cursor=forged", "/api/events", READ_TOKEN, None, 400),
    ("GET", "/api/events/nope", "/api/events/{log_id}", READ_TOKEN, None, 404),
    ("GET", "/api/stats?since=20261101", "/api/stats", READ_TOKEN, None, 422),
    ("POST", "/api/logs", "/api/logs", READ_TOKEN, b"{}", 403),
    ("POST", "/api/logs", "/api/logs", INGEST_TOKEN, b"", 400),
]


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    document: dict[str, Any] = (await client.get("/openapi.json")).json()
    return document


@pytest.mark.parametrize(
    ("method", "path", "documented", "token", "body", "status"),
    ERRORS,
    ids=[f"{e[0]} {e[1]} {e[5]}" for e in ERRORS],
)
async def test_every_error_answered_is_documented(
    client: httpx.AsyncClient,
    spec: dict[str, Any],
    method: str,
    path: str,
    documented: str,
    token: str | None,
    body: Any,
    status: int,
) -> None:
    admin = bearer(ADMIN_TOKEN)
    for name in ("taken", "other"):  # ids 1 and 2, for the conflicts
        assert (
            await client.post("/api/destinations", json=NEW | {"name": name}, headers=admin)
        ).status_code == 201
    headers = bearer(token) if token else {}
    if isinstance(body, bytes):
        response = await client.request(method, path, content=body, headers=headers)
    else:
        response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "detail"}
    answers = spec["paths"][documented][method.lower()]["responses"]
    assert str(status) in answers, sorted(answers)
    assert answers[str(status)]["content"]["application/json"]["schema"] == ERROR_BODY


def test_no_error_is_documented_in_a_shape_logrelay_never_sends(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    assert answer["content"]["application/json"]["schema"] == ERROR_BODY, (
                        path,
                        method,
                        status,
                    )


def test_a_patch_offers_null_only_where_it_is_taken(spec: dict[str, Any]) -> None:
    fields = spec["components"]["schemas"]["DestinationPatch"]["properties"]
    nullable = {name for name, schema in fields.items() if {"type": "null"} in schema.get("anyOf", [])}
    assert nullable.isdisjoint(NOT_NULL)
    assert {"authorization", "signing_secret", "headers", "types"} <= nullable


def test_the_receiver_documents_the_body_it_requires(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/api/logs"]["post"]["requestBody"]
    assert body["required"] is True
    assert "application/json" in body["content"]
