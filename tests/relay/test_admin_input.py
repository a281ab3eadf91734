"""The admin and read APIs refuse what they cannot take with a 4xx that names it, never a 500, and
hold no body larger than they need, whoever sends it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from tests.conftest import LiveServer, status_line_without_the_body
from tests.relay.conftest import add_destination

TOO_BIG = 2 * 1024 * 1024


def problems(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    body = orjson.loads(response.content)  # valid JSON even when it quotes a lone surrogate
    assert body["error"] == "invalid_request"
    return [problem["parameter"] for problem in body["detail"]]


async def test_an_anonymous_oversized_body_is_refused_before_it_is_read(relay: LiveServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(TOO_BIG // 65536):
            yield b"x" * 65536
        yield b'"}'

    async with httpx.AsyncClient(base_url=relay.base_url) as anonymous:
        declared = await anonymous.post("/api/destinations", content=b"x" * TOO_BIG)
        streamed = await anonymous.post("/api/destinations", content=chunks())  # no Content-Length
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "payload_too_large"
    # Declared too large: refused at once, without waiting for (or reading) the body.
    status_line = await status_line_without_the_body(relay.base_url, "/api/destinations", {})
    assert status_line.split()[1] == b"413", status_line


async def test_unknown_fields_are_refused_by_name(api: httpx.AsyncClient) -> None:
    created = await api.post(
        "/api/destinations", json={"name": "a", "url": "https://x.example.com", "signing_secrets": "x" * 20}
    )
    assert problems(created) == ["signing_secrets"]
    destination = await add_destination(api, "https://x.example.com")
    assert problems(await api.patch(f"/api/destinations/{destination['id']}", json={"enable": False})) == [
        "enable"
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"name": "a\\u0000b", "url": "https://x.example.com"}', "name"),
        (b'{"name": "a", "url": "https://x.example.com", "types": ["\\ud800"]}', "types"),
        (
            b'{"name": "a", "url": "https://x.example.com", "signing_secret": "0123456789abcdef\\u0000"}',
            "signing_secret",
        ),
        (
            b'{"name": "a", "url": "https://x.example.com", "api_endpoints": ["/api/v2/\\udfff"]}',
            "api_endpoints",
        ),
    ],
)
async def test_text_no_database_can_store_is_refused(api: httpx.AsyncClient, body: bytes, field: str) -> None:
    response = await api.post("/api/destinations", content=body, headers={"Content-Type": "application/json"})
    assert problems(response) == [field]


@pytest.mark.parametrize(
    ("method", "path", "parameter"),
    [
        ("GET", "/api/destinations/2147483648", "destination_id"),
        ("PATCH", "/api/destinations/2147483648", "destination_id"),
        ("POST", "/api/destinations/0/retry-dead", "destination_id"),
        ("GET", "/api/deliveries?destination=2147483648", "destination"),
        ("GET", "/api/deliveries?before=9223372036854775808", "before"),
        ("POST", "/api/deliveries/9223372036854775808/retry", "delivery_id"),
    ],
)
async def test_ids_beyond_the_columns_are_refused(
    api: httpx.AsyncClient, method: str, path: str, parameter: str
) -> None:
    response = await api.request(method, path, json={} if method == "PATCH" else None)
    assert parameter in problems(response)


async def test_a_replay_date_out_of_range_is_refused(api: httpx.AsyncClient) -> None:
    destination = await add_destination(api, "https://x.example.com")
    response = await api.post(
        f"/api/destinations/{destination['id']}/replay", params={"since": "0001-01-01T00:00:00+01:00"}
    )
    assert problems(response) == ["since"]


async def test_the_token_is_checked_before_the_query(relay: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as anonymous:
        for method, path in [("GET", "/api/poller?foo=1"), ("POST", "/api/poller/run?foo=1")]:
            assert (await anonymous.request(method, path)).status_code == 401


async def test_health_answers_head_for_uptime_checks(relay: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as anonymous:
        for path in ("/healthz", "/readyz"):
            response = await anonymous.head(path)
            assert response.status_code == 200
            assert response.content == b""


async def test_a_replay_date_must_be_iso_8601(api: httpx.AsyncClient) -> None:
    destination = await add_destination(api, "https://x.example.com")
    # Read as a Unix time, 20261101 would be 1970-08-23 and replay every event stored since.
    response = await api.post(f"/api/destinations/{destination['id']}/replay", params={"since": "20261101"})
    assert problems(response) == ["since"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"name": "\xff"}', "is not valid JSON: it is not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "is nested too deeply"),
        (b'{"name": ', "is not valid JSON: Expecting value at character 9"),
    ],
    ids=["not-utf8", "too-deep", "syntax"],
)
@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_body_that_is_not_json_is_named(
    api: httpx.AsyncClient, method: str, body: bytes, message: str
) -> None:
    destination = await add_destination(api, "https://x.example.com")
    path = "/api/destinations" if method == "POST" else f"/api/destinations/{destination['id']}"
    response = await api.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json() == {
        "error": "invalid_request",
        "detail": [{"parameter": "body", "message": message}],
    }


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/destinations", "GET, POST"),
        ("OPTIONS", "/api/destinations/1", "GET, PATCH, DELETE"),
        ("GET", "/api/destinations/1/replay", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
async def test_a_method_not_allowed_lists_every_method_the_path_takes(
    api: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await api.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error"] == "method_not_allowed"
