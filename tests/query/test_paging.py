"""Keyset paging: complete, in order, stable while events keep arriving; cursors are checked."""

from __future__ import annotations

import base64
from datetime import timedelta

import httpx
import pytest

from app.cursor import Position, decode_cursor, encode_cursor
from app.errors import BadRequest
from tests.query.support import BASE, READ, expected_ids, iso, read_all, seed, varied_events


@pytest.mark.parametrize("limit", [1, 7, 48, 1000])
async def test_pages_cover_every_event_once_in_order(client: httpx.AsyncClient, limit: int) -> None:
    events = varied_events()
    await seed(client, events)
    answered = [e["log_id"] for e in await read_all(client, limit=limit)]
    assert answered == expected_ids(events)


async def test_events_sharing_a_date_are_ordered_by_log_id(client: httpx.AsyncClient) -> None:
    events = varied_events(12)
    for event in events:
        event["date"] = iso(BASE)
    await seed(client, events)
    answered = [e["log_id"] for e in await read_all(client, limit=5)]
    assert answered == sorted((e["log_id"] for e in events), reverse=True)


async def test_paging_under_concurrent_inserts(client: httpx.AsyncClient) -> None:
    """Newer and older events arrive between page requests: none that existed at the start is skipped
    or repeated, and no event is answered twice."""
    original = varied_events(60)
    await seed(client, original)
    original_ids = {e["log_id"] for e in original}
    seen: list[str] = []
    params: dict[str, object] = {"limit": 8}
    arrivals = 0
    ahead: list[str] = []
    behind: list[str] = []
    while True:
        response = await client.get("/api/events", params=params, headers=READ)
        assert response.status_code == 200
        body = response.json()
        seen += [e["log_id"] for e in body["events"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
        # Between pages: a newer event, an older one (still ahead of the reader), and one dated exactly
        # like the last event shown, on both sides of its log id.
        last = body["events"][-1]
        arrivals += 1
        newer = varied_events(1, start=BASE + timedelta(days=3, minutes=arrivals))
        older = varied_events(1, start=BASE - timedelta(days=1, minutes=arrivals))
        same_date = varied_events(2)
        for event, log_id in zip(same_date, (f"000tie{arrivals:03d}", f"zzztie{arrivals:03d}"), strict=True):
            event["date"], event["log_id"] = last["date"], log_id
        await seed(client, newer + older + same_date)
        ahead += [older[0]["log_id"], same_date[0]["log_id"]]
        behind += [newer[0]["log_id"], same_date[1]["log_id"]]
    assert arrivals >= 7
    assert len(seen) == len(set(seen)), "an event was answered twice"
    assert original_ids <= set(seen), "an event that existed at the start was skipped"
    # Keyset semantics: what arrived after the reader's position is read, what arrived before is not.
    assert set(ahead) <= set(seen)
    assert not set(behind) & set(seen)
    # What was read is in strict (date, log_id) order, newest first.
    assert [i for i in seen if i in original_ids] == expected_ids(original)


async def test_filtered_paging_continues_the_filter(client: httpx.AsyncClient) -> None:
    events = varied_events(96)
    await seed(client, events)
    answered = await read_all(client, limit=3, category="failure", client_id="client-0")
    assert [e["log_id"] for e in answered] == expected_ids(events, category="failure", client_id="client-0")
    assert len(answered) > 6


def test_cursor_round_trip() -> None:
    position = Position(BASE + timedelta(microseconds=123457), "9002026" + "é" * 3)
    assert decode_cursor(encode_cursor(position)) == position


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "AAAA",
        base64.urlsafe_b64encode(b"\x01" + b"\x00" * 30).decode(),
        # A real cursor with one character changed.
        "X" + encode_cursor(Position(BASE, "900"))[1:],
        encode_cursor(Position(BASE, "900"))[:-3],
        "=" * 8,
    ],
)
async def test_forged_or_garbled_cursor_is_a_400_naming_cursor(
    client: httpx.AsyncClient, cursor: str
) -> None:
    with pytest.raises(BadRequest):
        decode_cursor(cursor)
    response = await client.get("/api/events", params={"cursor": cursor}, headers=READ)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "bad_request"
    assert body["detail"][0]["parameter"] == "cursor"


async def test_the_longest_log_ids_page_and_fetch(client: httpx.AsyncClient) -> None:
    # 255 four-byte characters make the longest cursor; a "/" in an id must still name one event.
    events = varied_events(3)
    events[0]["log_id"] = "\N{GRINNING FACE}" * 255
    events[1]["log_id"] = "tenant/region/1"
    await seed(client, events)
    answered = [e["log_id"] for e in await read_all(client, limit=1)]
    assert answered == expected_ids(events)
    for log_id in (events[0]["log_id"], events[1]["log_id"]):
        response = await client.get(f"/api/events/{log_id}", headers=READ)
        assert response.status_code == 200, response.text
        assert response.json()["log_id"] == log_id
