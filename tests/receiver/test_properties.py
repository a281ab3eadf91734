"""The receiver over HTTP, on the real database, with bodies drawn by hypothesis: the real fixtures
mutated, good events among them, in every framing and gzip, then with bytes changed. Each ends in a
200 or a 400 (JSON naming why), never a 5xx; the answer adds up and matches what the database holds,
and no good event is lost beside a bad one."""

from __future__ import annotations

import gzip

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import auth
from tests.receiver.support import count_events, quarantined, stored_ids
from tests.strategies import DETERMINISTIC, mixed_body

Example = tuple[bytes, list[str], int, bool]
# The client and the database are the same for every example: each checks what it added.
ONE_SERVER = settings(
    DETERMINISTIC, max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


async def post(client: httpx.AsyncClient, engine: AsyncEngine, body: bytes, gzipped: bool) -> httpx.Response:
    events, lines = await count_events(engine), len(await quarantined(engine))
    headers = auth() | ({"Content-Encoding": "gzip"} if gzipped else {})
    response = await client.post("/api/logs", content=body, headers=headers)
    answer = response.json()
    if response.status_code == 400:
        assert set(answer) == {"error", "detail"}
        assert answer["detail"]
        assert (await count_events(engine), len(await quarantined(engine))) == (events, lines)
        return response
    assert response.status_code == 200, response.text
    assert answer["received"] == answer["stored"] + answer["duplicates"] + answer["rejected"]
    assert answer.get("quarantined", 0) == answer["rejected"] == len(answer.get("errors", []))
    assert await count_events(engine) == events + answer["stored"]
    assert len(await quarantined(engine)) == lines + answer["rejected"]
    return response


@settings(ONE_SERVER, max_examples=60)
@given(example=mixed_body(gzipped=True))
async def test_good_events_among_odd_items(
    client: httpx.AsyncClient, engine: AsyncEngine, example: Example
) -> None:
    body, good, count, gzipped = example
    response = await post(client, engine, body, gzipped)
    assert response.status_code == 200, response.text
    assert response.json()["received"] == count
    assert set(good) <= await stored_ids(engine)


@settings(ONE_SERVER, max_examples=40)
@given(example=mixed_body(), junk=st.binary(max_size=16), at=st.integers(0, 10**6))
async def test_bodies_with_bytes_changed(
    client: httpx.AsyncClient, engine: AsyncEngine, example: Example, junk: bytes, at: int
) -> None:
    body = example[0]
    at %= len(body)
    await post(client, engine, body[:at] + junk + body[at + len(junk) :], False)
    await post(client, engine, body[:at], False)
    compressed = gzip.compress(body)
    await post(client, engine, compressed[: at % len(compressed)] + junk, True)  # cut short, or garbage after
