"""Event shapes and log ids: the stream envelope, bare Management API logs, Auth0's docs test payload,
and events without any id."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import auth
from tests.factories import make_event, make_log_id
from tests.receiver.support import count_events, fixture_bytes, fixture_items, get_event, stored_ids


async def post(client: httpx.AsyncClient, document: Any) -> dict[str, Any]:
    response = await client.post("/api/logs", content=orjson.dumps(document), headers=auth())
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_stream_envelope(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    event = make_event(type="s", user_name="alice@example.com")
    await post(client, [{"log_id": event["log_id"], "data": event}])
    row = await get_event(engine, event["log_id"])
    assert row.data == event
    assert (row.type, row.user_name) == ("s", "alice@example.com")


async def test_bare_management_api_log_with_id_and_log_id(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    items = fixture_items("mgmt_api_logs.json")
    assert all(i["_id"] == i["log_id"] for i in items)
    answer = await post(client, items)
    assert answer["stored"] == len(items)
    for item in items:
        row = await get_event(engine, item["log_id"])
        assert row.data == item  # kept whole, `_id` included
        assert row.type == item["type"]


async def test_bare_log_with_only_underscore_id(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    item = fixture_items("mgmt_api_logs.json")[0]
    del item["log_id"]
    await post(client, item)
    row = await get_event(engine, item["_id"])
    assert row.id_generated is False


async def test_docs_test_payload_takes_data_log_id(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    body = fixture_bytes("stream_docs_test_payload.json")
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.json() == {"received": 1, "stored": 1, "duplicates": 0, "rejected": 0}
    row = await get_event(engine, "abc1234567890")
    assert (row.type, row.category, row.client_name) == ("f", "failure", "Test Client Name")
    assert row.id_generated is False


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"log_id": "top", "data": {"type": "s", "log_id": "inner", "_id": "under"}}, "top"),
        ({"data": {"type": "s", "log_id": "inner", "_id": "under"}}, "inner"),
        ({"data": {"type": "s", "_id": "under"}}, "under"),
        ({"log_id": "top", "data": {"type": "s", "_id": "under"}}, "top"),
        ({"type": "s", "log_id": "bare", "_id": "under"}, "bare"),
        ({"type": "s", "_id": "under"}, "under"),
        ({"log_id": "", "data": {"type": "s", "log_id": "inner"}}, "inner"),  # empty is no id
        ({"type": "s", "log_id": 12345}, "12345"),  # a number is an id too
    ],
)
async def test_id_precedence(
    client: httpx.AsyncClient, engine: AsyncEngine, item: dict[str, Any], expected: str
) -> None:
    await post(client, [item])
    assert await stored_ids(engine) == {expected}


async def test_event_without_id_is_hashed_and_flagged(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    item = {"data": {"type": "f", "date": "2026-11-23T10:00:00.000Z", "description": "no id here"}}
    assert await post(client, item) == {"received": 1, "stored": 1, "duplicates": 0, "rejected": 0}
    (log_id,) = await stored_ids(engine)
    assert log_id.startswith("sha256:")
    assert len(log_id) == len("sha256:") + 64
    int(log_id.removeprefix("sha256:"), 16)
    row = await get_event(engine, log_id)
    assert row.id_generated is True
    assert row.data == item["data"]

    # The same content again, in another framing and with other key order, is a duplicate.
    reordered = {"data": dict(reversed(list(item["data"].items())))}
    body = orjson.dumps(reordered) + b"\n"
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.json() == {"received": 1, "stored": 0, "duplicates": 1, "rejected": 0}
    # Different content is a different event.
    other = {"data": {**item["data"], "description": "another one"}}
    assert (await post(client, [other]))["stored"] == 1
    assert await count_events(engine) == 2


async def test_hash_is_of_content(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    item = {"type": "w", "description": "bare, no id"}
    await post(client, item)
    (log_id,) = await stored_ids(engine)
    digest = log_id.removeprefix("sha256:")
    candidates = {
        hashlib.sha256(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        hashlib.sha256(orjson.dumps({"data": item}, option=orjson.OPT_SORT_KEYS)).hexdigest(),
    }
    assert digest in candidates


async def test_extension_payload_without_ids(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    """The Management API Webhooks extension posts `{date, request, response}` with no id at all."""
    payload = orjson.loads(fixture_bytes("ext_mgmt_webhooks_payload.json"))
    batch = payload["batch_mode_body"]
    answer = await post(client, batch)
    assert answer["stored"] == len({orjson.dumps(b, option=orjson.OPT_SORT_KEYS) for b in batch})
    assert (await post(client, payload["single_mode_body"]))["rejected"] == 0
    ids = await stored_ids(engine)
    assert ids
    assert all(i.startswith("sha256:") for i in ids)


async def test_mixed_shapes_in_one_body(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    envelope_event = make_event()
    bare = make_event(_id=make_log_id())
    bare["log_id"] = bare["_id"]
    docs = {"data": {"type": "f", "log_id": make_log_id()}}
    body = b"\n".join(
        orjson.dumps(x) for x in ({"log_id": envelope_event["log_id"], "data": envelope_event}, bare, docs)
    )
    response = await client.post("/api/logs", content=body, headers=auth())
    assert response.json() == {"received": 3, "stored": 3, "duplicates": 0, "rejected": 0}
    assert await stored_ids(engine) == {envelope_event["log_id"], bare["log_id"], docs["data"]["log_id"]}


async def test_the_path_with_a_trailing_slash_is_the_same_receiver(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # People type the URL into Auth0 by hand; a redirect would drop the POST.
    event = make_event()
    body = orjson.dumps([{"log_id": event["log_id"], "data": event}])
    response = await client.post("/api/logs/", content=body, headers=auth())
    assert response.status_code == 200, response.text
    assert await stored_ids(engine) == {event["log_id"]}


async def test_the_management_api_page_shape_is_unpacked(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    items = fixture_items("mgmt_api_logs.json")
    answer = await post(client, {"start": 0, "limit": 50, "length": len(items), "logs": items})
    assert answer["stored"] == len(items)
    assert await stored_ids(engine) == {i["log_id"] for i in items}
