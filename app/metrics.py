"""Prometheus metrics for GET /metrics.

Two kinds. Counters and histograms are kept by the process that does the work: ingest, and the
deliveries, poll passes and purges of the workers `serve` runs. Under `serve --workers N` they are
summed over the N processes through prometheus-client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`,
which `serve` sets). The state that alerts should watch, the outbox backlog and its age, each destination's
failures and the poller's lag, is read from the database at scrape time instead: it is the same on
every replica and includes the work of separate `worker` and `poll` processes. That read is one
limited read (app.query_timeout); when it fails or runs out of time the scrape answers the counters
alone, with logrelay_database_up 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from app import deliveries
from app.errors import NotFound, QueryTimeout, Unavailable
from app.ingest import StoreResult
from app.models import Destination
from app.poller import status as poller_status
from app.retry import Outcome, verdict_of

log = logging.getLogger(__name__)

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# A `_created` series beside every counter is noise to alert rules.
disable_created_metrics()  # type: ignore[no-untyped-call]

INGEST_REQUESTS = Counter(
    "logrelay_ingest_requests", "POST /api/logs requests, by the status answered.", ["status"]
)
INGEST_SECONDS = Histogram(
    "logrelay_ingest_request_duration_seconds",
    "POST /api/logs from the request to the answer, the commit included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVENTS = Counter(
    "logrelay_events",
    "Events committed, by source (stream, poller) and outcome (stored, duplicate, rejected).",
    ["source", "outcome"],
)
DELIVERY_REQUESTS = Counter(
    "logrelay_delivery_requests",
    "Requests sent to destinations, by destination id and verdict (delivered, retry, dead).",
    ["destination", "verdict"],
)
DELIVERY_EVENTS = Counter(
    "logrelay_delivery_events",
    "Events in the requests sent to destinations, by destination id and verdict.",
    ["destination", "verdict"],
)
DELIVERY_SECONDS = Histogram(
    "logrelay_delivery_request_duration_seconds",
    "One request to a destination, from sending to its answer or failure.",
    ["destination"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
QUERY_TIMEOUTS = Counter(
    "logrelay_query_timeouts",
    "Reads the database stopped at QUERY_TIMEOUT, by reader: query and admin (a 504 each), metrics "
    "(a scrape without the database state).",
    ["reader"],
)
for _reader in ("query", "admin", "metrics"):  # shown at 0 from the start, for rate() and alerts
    QUERY_TIMEOUTS.labels(_reader)
PURGED_EVENTS = Counter("logrelay_purged_events", "Events deleted past EVENT_RETENTION.")
PURGED_QUARANTINED_LINES = Counter(
    "logrelay_purged_quarantined_lines", "Quarantined lines deleted past EVENT_RETENTION."
)


def count_ingest_request(status: int, started: float) -> None:
    _ingest_requests(status).inc()
    INGEST_SECONDS.observe(time.perf_counter() - started)


def count_events(source: str, result: StoreResult) -> None:
    """Call once the transaction that holds `result` has committed."""
    if result.stored:
        _events(source, "stored").inc(result.stored)
    if result.duplicates:
        _events(source, "duplicate").inc(result.duplicates)
    if result.rejected:
        _events(source, "rejected").inc(result.rejected)


# labels() validates and locks on every call, a few microseconds of each ingest request: keep children.
@functools.cache
def _ingest_requests(status: int) -> Counter:
    return INGEST_REQUESTS.labels(str(status))


@functools.cache
def _events(source: str, outcome: str) -> Counter:
    return EVENTS.labels(source, outcome)


def count_delivery(destination_id: int, events: int, outcome: Outcome, seconds: float) -> None:
    destination, verdict = str(destination_id), verdict_of(outcome)
    DELIVERY_REQUESTS.labels(destination, verdict).inc()
    DELIVERY_EVENTS.labels(destination, verdict).inc(events)
    DELIVERY_SECONDS.labels(destination).observe(seconds)


# The longest a scrape reads the database, below QUERY_TIMEOUT when that is longer: Prometheus gives up
# on a scrape after its scrape_timeout (10 s by default), and then would not even get the counters.
SCRAPE_TIME_LIMIT = 5.0

Reading = Callable[[], AbstractAsyncContextManager[AsyncConnection]]


def scrape_time_limit(query_timeout: float | None) -> float:
    """How long a scrape may read the database: QUERY_TIMEOUT, at most SCRAPE_TIME_LIMIT."""
    return SCRAPE_TIME_LIMIT if query_timeout is None else min(query_timeout, SCRAPE_TIME_LIMIT)


async def render(reading: Reading, poller_enabled: bool, lag_limit: timedelta) -> bytes:
    """The exposition text: the counters, then the state read from the database now, through one
    limited read (`reading`, app.query_timeout's)."""
    families = await _database_families(reading, poller_enabled, lag_limit)
    # In multiprocess mode the counters are read from files: off the event loop.
    return await asyncio.to_thread(_exposition, families)


def _exposition(families: list[GaugeMetricFamily]) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    if os.environ.get(MULTIPROCESS_DIR):
        # The sum over every process; this process's own registry would repeat its share.
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY) + generate_latest(registry)


async def _database_families(
    reading: Reading, poller_enabled: bool, lag_limit: timedelta
) -> list[GaugeMetricFamily]:
    up = GaugeMetricFamily("logrelay_database_up", "Whether this scrape could read the database.")
    try:
        async with reading() as conn:
            destinations = (await conn.execute(select(Destination.id, Destination.name))).all()
            health = []
            for destination in destinations:
                with contextlib.suppress(NotFound):  # deleted since the list was read: not a failed scrape
                    health.append((destination, await deliveries.destination_health(conn, destination.id)))
            poller = await poller_status.describe(conn, lag_limit) if poller_enabled else None
    except (SQLAlchemyError, OSError, QueryTimeout, Unavailable) as exc:  # the counters are still worth it
        # By class name only: a driver's message may quote the statement.
        log.warning("a scrape could not read the database (%s): only counters answered", type(exc).__name__)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    return [up, *_destination_families(health), *_poller_families(poller)]


def _destination_families(health: Sequence[tuple[Any, dict[str, Any]]]) -> list[GaugeMetricFamily]:
    info = GaugeMetricFamily(
        "logrelay_destination_info", "A destination's name, by its id.", labels=["destination", "name"]
    )
    items = GaugeMetricFamily(
        "logrelay_outbox_items",
        "Outbox rows to deliver or dead, by destination and status (pending, failed, dead).",
        labels=["destination", "status"],
    )
    oldest = GaugeMetricFamily(
        "logrelay_outbox_oldest_open_age_seconds",
        "Age of the oldest row still to be delivered (pending or failed); 0 when there is none.",
        labels=["destination"],
    )
    failures = GaugeMetricFamily(
        "logrelay_destination_consecutive_failures",
        "Failed requests in a row; 0 once a request succeeds.",
        labels=["destination"],
    )
    last_success = GaugeMetricFamily(
        "logrelay_destination_last_success_timestamp_seconds",
        "When a request to the destination last succeeded (Unix time).",
        labels=["destination"],
    )
    for destination, state in health:
        label = str(destination.id)
        info.add_metric([label, destination.name], 1)
        for status, count in state["counts"].items():
            items.add_metric([label, status], count)
        oldest.add_metric([label], state["oldest_pending_age_seconds"] or 0)
        failures.add_metric([label], state["consecutive_failures"])
        if state["last_success_at"] is not None:
            last_success.add_metric([label], state["last_success_at"].timestamp())
    return [info, items, oldest, failures, last_success]


def _poller_families(status: dict[str, Any] | None) -> Iterator[GaugeMetricFamily]:
    if status is None:
        return
    running = GaugeMetricFamily("logrelay_poller_running", "Whether a poll pass holds the pass lock now.")
    running.add_metric([], int(status["running"]))
    yield running
    if status["lag_seconds"] is not None:
        lag = GaugeMetricFamily(
            "logrelay_poller_lag_seconds", "How far the poller trails real time (as GET /api/poller says)."
        )
        lag.add_metric([], status["lag_seconds"])
        yield lag
    run = status["last_run"]
    if run is not None and run["ended_at"] is not None:
        ended = GaugeMetricFamily(
            "logrelay_poller_last_run_end_timestamp_seconds", "When the last poll pass ended (Unix time)."
        )
        ended.add_metric([], run["ended_at"].timestamp())
        failed = GaugeMetricFamily(
            "logrelay_poller_last_run_failed", "Whether the last poll pass ended in an error."
        )
        failed.add_metric([], int(run["error"] is not None))
        yield from (ended, failed)


class _Fixed(Collector):
    """Metric families computed before the registry is asked for them."""

    def __init__(self, families: Iterable[GaugeMetricFamily]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._families
