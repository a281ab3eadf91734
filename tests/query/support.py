"""Helpers for the query tests: a varied set of events, a plain-Python reference of the filters, and
seeding through the real receiver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.auth0.catalog import category_of
from tests.conftest import READ_TOKEN, auth, bearer
from tests.factories import make_event, make_log_id, make_stream_body

BASE = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
READ = bearer(READ_TOKEN)

_TYPES = ["s", "fp", "f", "w", "sapi", "s", "ssa", "depnote", "fu", "seacft", "s", "limit_wc"]
_USERS = [("auth0|alice", "alice@example.com"), ("auth0|bob", "Bob@Example.com"), (None, "carol@example.com")]
_DESCRIPTIONS = {
    "fp": "Wrong email or password.",
    "f": "Grant 50%_off rejected",
    "w": "Email not verified",
    "fu": "Wrong email or username.",
}


def iso(date: datetime) -> str:
    return date.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def varied_events(n: int = 48, start: datetime = BASE) -> list[dict[str, Any]]:
    """Events 37 minutes apart (over about a day), with two pairs sharing one date."""
    events = []
    for i in range(n):
        date = start + timedelta(minutes=37 * i)
        if i in (10, 30):  # same date as the previous event: ties are broken by log_id
            date = start + timedelta(minutes=37 * (i - 1))
        type_ = _TYPES[i % len(_TYPES)]
        user_id, user_name = _USERS[i % len(_USERS)]
        events.append(
            make_event(
                log_id=make_log_id(),
                date=iso(date),
                type=type_,
                description=_DESCRIPTIONS.get(type_, f"Event {type_}"),
                user_id=user_id,
                user_name=user_name,
                client_id=f"client-{i % 2}",
                connection=("Username-Password-Authentication", "google-oauth2")[i % 4 == 0],
                ip=f"10.0.0.{i % 5}",
                details={"position": i, "nested": {"list": [1, 2, 3]}},
            )
        )
    return events


async def seed(client: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    response = await client.post("/api/logs", content=make_stream_body(events), headers=auth())
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == len(events)


def _date(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["date"])


def newest_first(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: (_date(e), e["log_id"]), reverse=True)


def expected_ids(events: list[dict[str, Any]], **filters: Any) -> list[str]:
    """The log ids the API should answer, worked out in Python, newest first."""
    types = [c for part in filters.get("type", []) for c in part.split(",")] if "type" in filters else None
    kept = []
    for event in events:
        if types is not None and event["type"] not in types:
            continue
        if "category" in filters and category_of(event["type"]) != filters["category"]:
            continue
        if any(
            event.get(k) != filters[k]
            for k in ("user_id", "user_name", "client_id", "connection", "ip")
            if k in filters
        ):
            continue
        if "since" in filters and _date(event) < datetime.fromisoformat(filters["since"]):
            continue
        if "until" in filters and _date(event) >= datetime.fromisoformat(filters["until"]):
            continue
        if "q" in filters:
            needle = filters["q"].lower()
            haystacks = (event.get("description") or "", event.get("user_name") or "")
            if not any(needle in h.lower() for h in haystacks):
                continue
        kept.append(event)
    return [e["log_id"] for e in newest_first(kept)]


async def read_all(client: httpx.AsyncClient, limit: int = 100, **params: Any) -> list[dict[str, Any]]:
    """Every page of GET /api/events, following next_cursor."""
    events: list[dict[str, Any]] = []
    query: dict[str, Any] = {**params, "limit": limit}
    for _ in range(1000):
        response = await client.get("/api/events", params=query, headers=READ)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["events"]) <= limit
        events += body["events"]
        if body["next_cursor"] is None:
            return events
        query["cursor"] = body["next_cursor"]
    raise AssertionError("paging did not end")
