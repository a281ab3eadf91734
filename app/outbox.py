"""The transactional outbox: rows queued for destinations in the transaction that stores events,
claimed with a lease in one short transaction (app.claims), and settled in another once the POST has
answered.

Nothing here commits and nothing here makes an HTTP call: the delivery loop owns both edges.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import (
    Insert,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import db_now
from app.filters import EventFilter
from app.models import Destination, OutboxItem
from app.payloads import message_id
from app.retry import Outcome, RetryPolicy, verdict_of

if TYPE_CHECKING:  # claims imports this module's statuses
    from app.claims import Claim, ClaimedItem

# Rows that still want a delivery; "failed" = tried and due again at next_attempt_at.
OPEN = ("pending", "failed")
SETTLED = ("delivered", "dead")  # the other statuses: nothing more to send
# A row no longer under a lease: settled, given back, or dead. Clearing lease_calls keeps the index of
# claims (ix_outbox_items_claims) to the live ones.
UNLEASED: dict[str, Any] = {"lease_until": None, "lease_calls": None}


def destination_filters(conn: Connection) -> list[tuple[int, EventFilter]]:
    """The enabled destinations' filters, by destination id."""
    targets = conn.execute(
        select(Destination.id, Destination.types, Destination.categories, Destination.api_endpoints).where(
            Destination.enabled.is_(True)
        )
    )
    return [(d.id, EventFilter.of(d.types, d.categories, d.api_endpoints)) for d in targets]


def queue_items(
    rows: Sequence[dict[str, Any]], filters: list[tuple[int, EventFilter]]
) -> list[dict[str, Any]]:
    """A new_item for each row and each destination whose filter matches it, in row order. The store
    (app.ingest) writes those of the rows it stores, in the transaction that stores them, so an event
    is never stored without being queued."""
    if not filters:  # no destination: no walk over the rows on the ingest path
        return []
    items = []
    for row in rows:
        data: dict[str, Any] | None = None
        for destination_id, event_filter in filters:
            if event_filter.api_endpoints and data is None:
                data = orjson.loads(str(row["data"]))  # orjson refuses str subclasses (RawJSON)
            if event_filter.matches(row["type"], row["category"], data or {}):
                items.append(new_item(destination_id, row["log_id"]))
    return items


def new_item(destination_id: int, log_id: str) -> dict[str, Any]:
    """A row for `queue`, which makes it due when it is created (what a pending row's age is read by)."""
    return {"destination_id": destination_id, "log_id": log_id, "status": "pending", "attempts": 0}


def queue(dialect: str) -> Insert:
    """The INSERT of new rows (new_item), created and due now by the database's clock, as claims
    compare: PostgreSQL's now() inside the statement, which costs no query (SQLite: the host's)."""
    now = func.now() if dialect == "postgresql" else datetime.now(UTC)
    return insert(OutboxItem).values(created_at=now, next_attempt_at=now)


async def release(conn: AsyncConnection, claim: Claim, items: Sequence[ClaimedItem], reason: str) -> None:
    """Settle rows that cannot be sent at all (their event is gone): dead, with the reason."""
    await conn.execute(
        update(OutboxItem)
        .where(OutboxItem.id.in_([i.id for i in items]), OutboxItem.lease_until == claim.lease_until)
        .values(**UNLEASED, status="dead", last_error=reason)
    )
    if claim.probe and len(items) == len(claim.items):  # nothing was sent: the next probe may go now
        await conn.execute(
            update(Destination).where(Destination.id == claim.target.id).values(backoff_until=None)
        )


async def record_outcomes(
    conn: AsyncConnection,
    claim: Claim,
    results: Sequence[tuple[Sequence[ClaimedItem], Outcome | None]],
    policy: RetryPolicy,
) -> None:
    """Settle a claim's rows after their POSTs, in the caller's second short transaction.

    2xx: delivered. Retryable: due again when the destination's backoff ends, unless the row has used
    its attempts or age (then dead). Permanent (a 4xx, a request that cannot be built): dead.
    Only retryable failures back off the whole destination: a permanent one says it is up.
    No outcome (None): not sent (the destination failed first, or the worker is stopping); the
    attempt is given back. Rows whose lease was taken over by another worker are left to that worker.
    Retries and backoff are timed by the database's clock, which the claims compare them with.
    """
    now = await db_now(conn)
    sent = [(items, outcome) for items, outcome in results if outcome is not None]
    unsent = [item.id for items, outcome in results if outcome is None for item in items]
    if unsent:
        await conn.execute(
            update(OutboxItem)
            .where(OutboxItem.id.in_(unsent), OutboxItem.lease_until == claim.lease_until)
            .values(**UNLEASED, attempts=OutboxItem.attempts - 1)
        )
    failures = [outcome for _, outcome in sent if not outcome.is_success]
    retryable = [outcome for outcome in failures if verdict_of(outcome) == "retry"]
    destination: dict[str, Any] = {}
    retry_at = now
    if any(outcome.is_success for _, outcome in sent):
        destination["last_success_at"] = now
    if failures:
        destination |= {"last_failure_at": now, "last_error": describe_outcome((retryable or failures)[-1])}
    if retryable:
        retry_afters = [o.retry_after for o in retryable if o.retry_after is not None]
        delay = policy.backoff(claim.target.consecutive_failures + 1, max(retry_afters, default=None))
        retry_at = now + timedelta(seconds=delay)
        destination |= {
            "consecutive_failures": Destination.consecutive_failures + 1,
            "backoff_until": retry_at,
        }
    elif sent:
        destination |= {"consecutive_failures": 0, "backoff_until": None}

    buckets: dict[tuple[str, int | None, str | None, str | None], list[int]] = defaultdict(list)
    for items, outcome in sent:
        verdict = verdict_of(outcome)
        error = None if verdict == "delivered" else describe_outcome(outcome)
        batch_id = None
        if verdict == "retry" and claim.target.as_batch:
            batch_id = message_id([item.log_id for item in items], as_batch=True)
        for item in items:
            status: str = verdict
            if verdict == "retry":
                status = "dead" if policy.gives_up(item.attempts, item.created_at, now) else "failed"
            buckets[(status, outcome.status_code, error, batch_id)].append(item.id)
    for (settled, code, error, batch_id), ids in buckets.items():
        values: dict[str, Any] = UNLEASED | {
            "status": settled,
            "last_status_code": code,
            "last_error": error,
            "last_attempt_at": now,
        }
        if settled == "delivered":
            values["delivered_at"] = now
        elif settled == "failed":
            values |= {"next_attempt_at": retry_at, "batch_id": batch_id}
        await conn.execute(
            update(OutboxItem)
            .where(OutboxItem.id.in_(ids), OutboxItem.lease_until == claim.lease_until)
            .values(**values)
        )
    if destination:
        await conn.execute(update(Destination).where(Destination.id == claim.target.id).values(**destination))
    elif claim.probe:  # the probe was not sent: the next one may go at once
        await conn.execute(
            update(Destination).where(Destination.id == claim.target.id).values(backoff_until=None)
        )


async def reset_backoff(conn: AsyncConnection, destination_id: int) -> None:
    """Forget a destination's failures and make its failed rows due now (the database's clock, which
    claims compare with): its settings were changed."""
    now = await db_now(conn)
    await conn.execute(
        update(Destination)
        .where(Destination.id == destination_id)
        .values(consecutive_failures=0, backoff_until=None)
    )
    await conn.execute(
        update(OutboxItem)
        .where(
            OutboxItem.destination_id == destination_id,
            OutboxItem.status == "failed",
            OutboxItem.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
    )


def describe_outcome(outcome: Outcome) -> str:
    if outcome.status_code is None:
        return outcome.error or "no answer"
    if outcome.error:
        return f"HTTP {outcome.status_code}: {outcome.error}"
    return f"HTTP {outcome.status_code}"


async def purge_delivered(conn: AsyncConnection, before: datetime, limit: int = 5000) -> int:
    """Delete up to `limit` rows delivered before `before`; dead letters stay until an operator acts.

    A delivered row was due when it was sent, so `next_attempt_at <= delivered_at`: filtering on
    both lets the (status, next_attempt_at) index find them.
    """
    old = (
        select(OutboxItem.id)
        .where(
            OutboxItem.status == "delivered",
            OutboxItem.next_attempt_at < before,
            OutboxItem.delivered_at < before,
        )
        .limit(limit)
    )
    result = await conn.execute(delete(OutboxItem).where(OutboxItem.id.in_(old.scalar_subquery())))
    return result.rowcount or 0
