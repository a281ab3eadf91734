"""GET /api/events: each filter, alone and combined, against a reference worked out in Python."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.query.support import READ, expected_ids, read_all, seed, varied_events

FILTERS: list[dict[str, Any]] = [
    {},
    {"type": ["fp"]},
    {"type": ["fp", "w"]},
    {"type": ["fp,w", "s"]},
    {"type": ["no_such_type"]},
    {"category": "failure"},
    {"category": "warning"},
    {"category": "other"},
    {"user_id": "auth0|alice"},
    {"user_name": "Bob@Example.com"},
    {"client_id": "client-1"},
    {"connection": "google-oauth2"},
    {"ip": "10.0.0.3"},
    {"since": "2026-11-20T20:00:00Z"},
    {"until": "2026-11-20T20:00:00Z"},
    {"since": "2026-11-20T12:00:00+02:00", "until": "2026-11-20T18:30:00.000Z"},
    {"q": "WRONG EMAIL"},
    {"q": "bob@example"},
    {"q": "50%_off"},
    {"q": "_"},
    {"q": "%"},
    {"type": ["s"], "user_id": "auth0|alice", "since": "2026-11-20T10:00:00Z"},
    {"category": "failure", "client_id": "client-0", "connection": "Username-Password-Authentication"},
    {"category": "other", "ip": "10.0.0.0", "until": "2026-11-21T00:00:00Z", "q": "event"},
    {"user_name": "carol@example.com", "type": ["fu", "f"]},
]


def _label(filters: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in filters.items()) or "none"


@pytest.mark.parametrize("filters", FILTERS, ids=[_label(f) for f in FILTERS])
async def test_filter_matches_reference(client: httpx.AsyncClient, filters: dict[str, Any]) -> None:
    events = varied_events()
    await seed(client, events)
    answered = await read_all(client, limit=7, **filters)
    want = expected_ids(events, **filters)
    assert [e["log_id"] for e in answered] == want
    # A filter that selects nothing proves nothing; only the deliberate misses may be empty.
    assert want or filters == {"type": ["no_such_type"]}


@pytest.mark.parametrize("q", ["élodie", "ÉCOLE", "ÅSA"])
async def test_q_ignores_case_beyond_ascii(client: httpx.AsyncClient, q: str) -> None:
    events = varied_events(3)
    events[1]["description"] = "Élodie at the école"
    events[2]["user_name"] = "åsa@example.com"
    await seed(client, events)
    answered = await read_all(client, q=q)
    assert [e["log_id"] for e in answered] == expected_ids(events, q=q)
    assert answered


async def test_since_and_until_without_offset_are_utc(client: httpx.AsyncClient) -> None:
    events = varied_events()
    await seed(client, events)
    answered = await read_all(client, since="2026-11-20T20:00:00", until="2026-11-21T02:00:00")
    expected = expected_ids(events, since="2026-11-20T20:00:00+00:00", until="2026-11-21T02:00:00+00:00")
    assert [e["log_id"] for e in answered] == expected
    assert expected


async def test_event_gives_columns_and_whole_data(client: httpx.AsyncClient) -> None:
    events = varied_events(4)
    long_description = "x" * 600 + " tail"
    events[0]["description"] = long_description
    await seed(client, events)
    response = await client.get(
        "/api/events", params={"limit": 1, "until": "2026-11-20T08:00:00.001Z"}, headers=READ
    )
    assert response.status_code == 200
    (event,) = response.json()["events"]
    original = events[0]
    assert event["log_id"] == original["log_id"]
    assert event["date"] == "2026-11-20T08:00:00.000Z"
    assert event["received_at"].endswith("Z")
    assert event["type"] == "s"
    assert event["category"] == "other"
    assert event["user_id"] == original["user_id"]
    assert event["user_name"] == original["user_name"]
    assert event["client_id"] == original["client_id"]
    assert event["client_name"] == original["client_name"]
    assert event["connection"] == original["connection"]
    assert event["ip"] == original["ip"]
    assert event["description"] == long_description[:512]  # the indexed copy is cut
    assert event["source"] == "stream"
    assert event["id_generated"] is False
    assert event["data"] == original  # whole, nested objects and the long text included


async def test_limit_caps_the_page(client: httpx.AsyncClient) -> None:
    events = varied_events(30)
    await seed(client, events)
    response = await client.get("/api/events", params={"limit": 5}, headers=READ)
    body = response.json()
    assert [e["log_id"] for e in body["events"]] == expected_ids(events)[:5]
    assert body["next_cursor"]
    default = (await client.get("/api/events", headers=READ)).json()
    assert len(default["events"]) == 30
    assert default["next_cursor"] is None


async def test_microsecond_dates_keep_their_order(client: httpx.AsyncClient) -> None:
    events = varied_events(3)
    events[0]["date"] = "2026-11-20T08:00:00.000001Z"
    events[1]["date"] = "2026-11-20T08:00:00.000002Z"
    events[2]["date"] = "2026-11-20T08:00:00.000000Z"
    await seed(client, events)
    answered = await read_all(client, limit=1)
    assert [e["log_id"] for e in answered] == [events[1]["log_id"], events[0]["log_id"], events[2]["log_id"]]
    assert [e["date"] for e in answered] == [
        "2026-11-20T08:00:00.000002Z",
        "2026-11-20T08:00:00.000001Z",
        "2026-11-20T08:00:00.000Z",
    ]
