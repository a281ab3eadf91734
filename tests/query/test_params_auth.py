"""Bad parameters get a 4xx naming the parameter; every query route needs a read token; the OpenAPI
document describes each parameter with an example."""

from __future__ import annotations

import httpx
import orjson
import pytest

from app.cursor import Position, encode_cursor
from tests.conftest import ADMIN_TOKEN, INGEST_TOKEN, READ_TOKEN, bearer
from tests.query.support import BASE, READ, expected_ids, seed, varied_events

BAD: list[tuple[str, dict[str, object], int, str]] = [
    ("/api/events", {"category": "failures"}, 422, "category"),
    ("/api/events", {"since": "yesterday"}, 422, "since"),
    ("/api/events", {"until": "2026-13-40T00:00:00Z"}, 422, "until"),
    ("/api/events", {"since": "2026-11-21T00:00:00Z", "until": "2026-11-20T00:00:00Z"}, 422, "until"),
    ("/api/events", {"limit": 1001}, 422, "limit"),
    ("/api/events", {"limit": 0}, 422, "limit"),
    ("/api/events", {"limit": "ten"}, 422, "limit"),
    ("/api/events", {"cursor": "forged"}, 400, "cursor"),
    ("/api/events", {"q": ""}, 422, "q"),
    ("/api/events", {"q": "x" * 201}, 422, "q"),
    ("/api/events", {"type": ",".join(f"t{n}" for n in range(51))}, 422, "type"),
    ("/api/events", {"type": "x" * 65}, 422, "type"),
    ("/api/events", {"user_id": "u" * 513}, 422, "user_id"),
    ("/api/events/export", {"category": "nope"}, 422, "category"),
    ("/api/events/export", {"since": "not a date"}, 422, "since"),
    ("/api/stats", {"interval": "week"}, 422, "interval"),
    ("/api/stats", {"since": "2020-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, 422, "since"),
    ("/api/stats", {"ip": ""}, 422, "ip"),
    # Values PostgreSQL would refuse, or dates that overflow once moved to UTC.
    ("/api/events", {"user_id": "a\x00b"}, 422, "user_id"),
    ("/api/events", {"q": "\x00"}, 422, "q"),
    ("/api/events", {"type": "f,\x00"}, 422, "type"),
    ("/api/events", {"cursor": encode_cursor(Position(BASE, "90\x0001"))}, 400, "cursor"),
    ("/api/events", {"since": "0001-01-01T00:00:00+05:00"}, 422, "since"),
    ("/api/stats", {"until": "0001-01-01T01:00:00Z"}, 422, "until"),
    # Parameters the route does not take, or repeats of single-valued ones, would answer another
    # question than the one asked.
    ("/api/events", {"types": "f"}, 422, "types"),
    ("/api/events/export", {"limit": 10}, 422, "limit"),
    ("/api/events", {"limit": [1, 2000]}, 422, "limit"),
    ("/api/events", {"user_id": ["a", "b"]}, 422, "user_id"),
    ("/api/events", {"type": ", "}, 422, "type"),
    ("/api/stats", {"since": "2999-01-01T00:00:00Z"}, 422, "since"),
    # A number is no ISO 8601 date: read as a Unix time, a date without its dashes would be 1970.
    ("/api/events", {"since": "20261101"}, 422, "since"),
    ("/api/events/export", {"until": "1700000000"}, 422, "until"),
    ("/api/stats", {"until": "0.5"}, 422, "until"),
]


@pytest.mark.parametrize(("path", "params", "status", "parameter"), BAD, ids=[f"{b[0]}:{b[3]}" for b in BAD])
async def test_bad_parameter_names_itself(
    client: httpx.AsyncClient, path: str, params: dict[str, object], status: int, parameter: str
) -> None:
    response = await client.get(path, params=params, headers=READ)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] in ("invalid_request", "bad_request")
    assert parameter in [problem["parameter"] for problem in body["detail"]]


ROUTES = ["/api/events", "/api/events/export", "/api/events/some-id", "/api/stats"]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), {"Authorization": "Bearer"}, {"Authorization": f"{READ_TOKEN},x"}],
    ids=["none", "wrong", "empty", "read-token-and-more"],
)
async def test_query_routes_need_a_read_token(
    client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> None:
    response = await client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ROUTES)
async def test_the_ingest_token_is_forbidden_to_read(client: httpx.AsyncClient, path: str) -> None:
    for headers in (bearer(INGEST_TOKEN), {"Authorization": INGEST_TOKEN}):
        response = await client.get(path, headers=headers)
        assert response.status_code == 403
        answer = response.json()
        assert answer == {
            "error": "forbidden",
            "detail": "this token is the LOG_STREAM_TOKEN; this route takes the API_TOKEN or ADMIN_TOKEN",
        }
        assert INGEST_TOKEN not in response.text


@pytest.mark.parametrize("token", [READ_TOKEN, ADMIN_TOKEN])
async def test_read_and_admin_tokens_read(client: httpx.AsyncClient, token: str) -> None:
    events = varied_events(2)
    await seed(client, events)
    answers = {}
    for path in ("/api/events", "/api/events/export", f"/api/events/{events[0]['log_id']}", "/api/stats"):
        params = {"since": "2026-11-19T00:00:00Z"} if path == "/api/stats" else {}  # not just the last day
        response = await client.get(path, headers=bearer(token), params=params)
        assert response.status_code == 200, (path, response.text)
        answers[path] = response
    assert [e["log_id"] for e in answers["/api/events"].json()["events"]] == expected_ids(events)
    exported = [orjson.loads(line)["log_id"] for line in answers["/api/events/export"].text.splitlines()]
    assert exported == expected_ids(events)
    assert answers[f"/api/events/{events[0]['log_id']}"].json()["data"] == events[0]
    assert answers["/api/stats"].json()["total"] == 2


async def test_a_date_without_a_time_is_midnight_utc(client: httpx.AsyncClient) -> None:
    events = varied_events(48)
    await seed(client, events)
    response = await client.get("/api/events", params={"since": "2026-11-21", "limit": 1000}, headers=READ)
    assert response.status_code == 200, response.text
    kept = expected_ids(events, since="2026-11-21T00:00:00+00:00")
    assert 0 < len(kept) < len(events)
    assert [e["log_id"] for e in response.json()["events"]] == kept


async def test_log_id_with_a_nul_is_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/events/a%00b", headers=READ)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_export_is_not_taken_for_a_log_id(client: httpx.AsyncClient) -> None:
    events = varied_events(1)
    events[0]["log_id"] = "export"
    await seed(client, events)
    response = await client.get("/api/events/export", headers=READ)
    assert response.headers["content-type"] == "application/x-ndjson"
    # The event whose id is literally "export" is still in the export stream.
    assert '"log_id":"export"' in response.text


async def test_openapi_describes_every_parameter_with_an_example(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    expected = {
        "/api/events": {"type", "category", "user_id", "user_name", "client_id", "connection", "ip", "since"}
        | {"until", "q", "limit", "cursor"},
        "/api/events/export": {"type", "category", "user_id", "since", "until", "q"},
        "/api/events/{log_id}": {"log_id"},
        "/api/stats": {"interval", "since", "until", "type", "category"},
    }
    for path, names in expected.items():
        operation = spec["paths"][path]["get"]
        parameters = {p["name"]: p for p in operation["parameters"]}
        assert names <= set(parameters), path
        for name, parameter in parameters.items():
            assert parameter.get("description"), (path, name)
            assert parameter["schema"].get("examples") or parameter.get("examples"), (path, name)
        assert operation.get("summary") or operation.get("description"), path
        assert {"401", "403", "422"} <= set(operation["responses"]), path
    schemas = spec["components"]["schemas"]
    assert spec["paths"]["/api/events"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/EventPage"}
    assert schemas["Event"]["examples"][0]["data"]
    assert "Stats" in schemas
    assert "application/x-ndjson" in spec["paths"]["/api/events/export"]["get"]["responses"]["200"]["content"]
    assert "404" in spec["paths"]["/api/events/{log_id}"]["get"]["responses"]
