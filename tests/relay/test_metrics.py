"""GET /metrics for the relay: delivery counters, and the outbox and destination state read from the
database (the same on every replica, and including separate `worker` processes)."""

from __future__ import annotations

import time

import httpx

from tests.conftest import LiveServer, Samples, read_metrics, sample
from tests.factories import make_event
from tests.relay.conftest import add_destination, deliver_all, ingest, next_round, statuses
from tests.relay.receiver import Answer, Receiver


async def test_a_failing_destination_shows_its_backlog_then_clears(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    from app.delivery import deliver_once

    destination = await add_destination(api, receiver.url, name="siem")
    label = str(destination["id"])
    before = await read_metrics(api)
    await ingest(api, [make_event() for _ in range(3)])
    receiver.answer(503)
    assert await deliver_once(relay.context) == 3
    failing = await read_metrics(api)

    def grew(now: Samples, name: str, /, **labels: str) -> float:
        return sample(now, name, **labels) - sample(before, name, **labels)

    assert sample(failing, "logrelay_destination_info", destination=label, name="siem") == 1
    assert grew(failing, "logrelay_delivery_requests_total", destination=label, verdict="retry") == len(
        receiver.requests
    )
    assert grew(failing, "logrelay_delivery_events_total", destination=label, verdict="retry") == 3
    assert sample(failing, "logrelay_outbox_items", destination=label, status="failed") == 3
    assert sample(failing, "logrelay_outbox_oldest_open_age_seconds", destination=label) > 0
    assert sample(failing, "logrelay_destination_consecutive_failures", destination=label) == 1
    no_success = ("logrelay_destination_last_success_timestamp_seconds", frozenset({("destination", label)}))
    assert no_success not in failing
    assert grew(failing, "logrelay_delivery_request_duration_seconds_count", destination=label) == len(
        receiver.requests
    )

    assert await next_round(relay.context) == 3  # the receiver answers 200 from now on
    delivered = await read_metrics(api)
    assert grew(delivered, "logrelay_delivery_events_total", destination=label, verdict="delivered") == 3
    assert sample(delivered, "logrelay_outbox_items", destination=label, status="failed") == 0
    assert sample(delivered, "logrelay_outbox_oldest_open_age_seconds", destination=label) == 0
    assert sample(delivered, "logrelay_destination_consecutive_failures", destination=label) == 0
    last_success = sample(delivered, "logrelay_destination_last_success_timestamp_seconds", destination=label)
    assert abs(last_success - time.time()) < 60


async def test_the_delivered_history_is_not_counted_at_scrape_time(
    relay: LiveServer, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """Delivered rows are kept for DELIVERY_KEEP_DELIVERED, millions of them on a busy tenant: the
    scrape and the health API count the backlog and the dead letters only (the delivery counters
    count deliveries)."""
    destination = await add_destination(api, receiver.url, send_as_batch=False, concurrent_calls=1)
    label = str(destination["id"])
    await ingest(api, [make_event(), make_event()])
    receiver.script.extend([Answer(200), Answer(404)])
    assert await deliver_all(relay.context) == 2
    await ingest(api, [make_event()])
    held = await statuses(api, destination["id"])
    assert held == {"pending": 1, "failed": 0, "delivered": 1, "dead": 1}

    metrics = await read_metrics(api)
    outbox = {
        dict(labels)["status"]: value
        for (name, labels), value in metrics.items()
        if name == "logrelay_outbox_items" and ("destination", label) in labels
    }
    assert outbox == {"pending": 1, "failed": 0, "dead": 1}
    health = (await api.get(f"/api/destinations/{label}")).json()["health"]
    assert health["counts"] == {"pending": 1, "failed": 0, "dead": 1}
    assert health["backlog"] == 1
