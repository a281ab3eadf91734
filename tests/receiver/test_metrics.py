"""GET /metrics: its token, and the ingest counters (requests by status, events by outcome)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    INGEST_TOKEN,
    LiveServer,
    auth,
    bearer,
    database_gone,
    read_metrics,
    sample,
)
from tests.factories import make_event, make_stream_body


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (bearer("wrong"), 401), (bearer(INGEST_TOKEN), 403), (bearer(ADMIN_TOKEN), 200)],
    ids=["none", "wrong", "ingest", "admin"],
)
async def test_metrics_need_a_read_token(
    client: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == status
    if status != 200:
        assert set(response.json()) == {"error", "detail"}
        assert "logrelay_" not in response.text


async def test_ingest_is_counted_by_status_and_outcome(client: httpx.AsyncClient) -> None:
    # Counters live for the whole test process: compare before and after.
    before = await read_metrics(client)
    first, second = make_event(), make_event()
    body = make_stream_body([first, second, first]) + b"\n{not json"
    answer = (await client.post("/api/logs", content=body, headers=auth())).json()
    assert (answer["stored"], answer["duplicates"], answer["rejected"]) == (2, 1, 1)
    for body, token, status in ((make_stream_body([second]), INGEST_TOKEN, 200), (b"", INGEST_TOKEN, 400)):
        assert (await client.post("/api/logs", content=body, headers=auth(token))).status_code == status
    assert (await client.post("/api/logs", content=b"{}", headers=auth("nope"))).status_code == 401
    after = await read_metrics(client)

    def grew(name: str, /, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("logrelay_events_total", source="stream", outcome="stored") == 2
    assert grew("logrelay_events_total", source="stream", outcome="duplicate") == 2
    assert grew("logrelay_events_total", source="stream", outcome="rejected") == 1
    assert grew("logrelay_ingest_requests_total", status="200") == 2
    assert grew("logrelay_ingest_requests_total", status="400") == 1
    assert grew("logrelay_ingest_requests_total", status="401") == 1
    assert grew("logrelay_ingest_request_duration_seconds_count") == 4
    assert grew("logrelay_ingest_request_duration_seconds_sum") > 0
    assert sample(after, "logrelay_database_up") == 1
    assert INGEST_TOKEN not in str(after)


async def test_a_scrape_without_the_database_says_so(client: httpx.AsyncClient, live: LiveServer) -> None:
    """The counters are still served, with logrelay_database_up 0 and no state read from it."""
    created = await client.post(
        "/api/destinations",
        json={"name": "siem", "url": "http://127.0.0.1:9/in"},
        headers=bearer(ADMIN_TOKEN),
    )
    assert created.status_code == 201, created.text
    await client.post("/api/logs", content=make_stream_body([make_event(type="f")]), headers=auth())
    state = await read_metrics(client)  # with the database: the destination's state is shown
    label = str(created.json()["id"])
    assert sample(state, "logrelay_outbox_items", destination=label, status="pending") == 1
    assert sample(state, "logrelay_destination_info", destination=label, name="siem") == 1

    async with database_gone(live):
        samples = await read_metrics(client)
    assert sample(samples, "logrelay_database_up") == 0
    assert ("logrelay_ingest_request_duration_seconds_count", frozenset()) in samples
    shown = {name for name, _ in samples}
    assert not {name for name in shown if name.startswith(("logrelay_outbox", "logrelay_destination"))}
