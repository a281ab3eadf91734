"""The transactional outbox: rows queued for destinations in the transaction that stores events,
claimed with a lease in one short transaction, and settled in another once the POST has answered.

Nothing here commits and nothing here makes an HTTP call: the delivery loop owns both edges.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Insert,
    Integer,
    ScalarSelect,
    Select,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningUpdate

from app.db import db_now
from app.filters import EventFilter
from app.models import Destination, OutboxItem, UTCDateTime
from app.payloads import message_id
from app.retry import Outcome, RetryPolicy, verdict_of

# Rows that still want a delivery; "failed" = tried and due again at next_attempt_at.
OPEN = ("pending", "failed")
SETTLED = ("delivered", "dead")  # the other statuses: nothing more to send
# Single mode claims a few rounds of calls at once, so that one claim feeds each of its calls.
SINGLE_ROUNDS = 4
MAX_CLAIM = 5000  # rows one claim may lease, whatever batch size x concurrent calls asks for
# A row no longer under a lease: settled, given back, or dead. Clearing lease_calls keeps the index of
# claims (ix_outbox_items_claims) to the live ones.
UNLEASED: dict[str, Any] = {"lease_until": None, "lease_calls": None}


def enqueue(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Queue each newly stored event for every enabled destination whose filter matches it.

    Runs inside the storing transaction, so an event is never stored without being queued.
    Costs one SELECT of the enabled destinations and at most one multi-row INSERT.
    """
    targets = conn.execute(
        select(Destination.id, Destination.types, Destination.categories, Destination.api_endpoints).where(
            Destination.enabled.is_(True)
        )
    )
    filters = [(d.id, EventFilter.of(d.types, d.categories, d.api_endpoints)) for d in targets]
    if not filters:
        return 0
    items = []
    for row in rows:
        data: dict[str, Any] | None = None
        for destination_id, event_filter in filters:
            if event_filter.api_endpoints and data is None:
                data = orjson.loads(str(row["data"]))  # orjson refuses str subclasses (RawJSON)
            if event_filter.matches(row["type"], row["category"], data or {}):
                items.append(new_item(destination_id, row["log_id"]))
    if items:
        conn.execute(queue(conn.dialect.name), items)
    return len(items)


def new_item(destination_id: int, log_id: str) -> dict[str, Any]:
    """A row for `queue`, which makes it due when it is created (what a pending row's age is read by)."""
    return {"destination_id": destination_id, "log_id": log_id, "status": "pending", "attempts": 0}


def queue(dialect: str) -> Insert:
    """The INSERT of new rows (new_item), created and due now by the database's clock, as claims
    compare: PostgreSQL's now() inside the statement, which costs no query (SQLite: the host's)."""
    now = func.now() if dialect == "postgresql" else datetime.now(UTC)
    return insert(OutboxItem).values(created_at=now, next_attempt_at=now)


@dataclass(frozen=True, slots=True)
class Target:
    """What the sender needs of a destination (secrets included: never log or return this)."""

    id: int
    name: str
    kind: str
    url: str
    authorization: str | None
    headers: dict[str, str] | None  # extra headers, sent as they are
    signing_secret: str | None
    previous_signing_secret: str | None  # signs too, until previous_secret_expires_at
    previous_secret_expires_at: datetime | None
    payload: str
    send_as_batch: bool
    batch_size: int
    concurrent_calls: int
    consecutive_failures: int

    @property
    def as_batch(self) -> bool:
        """A JSON array per POST, even of one event; Slack always groups a burst into one message."""
        return self.send_as_batch or self.kind == "slack"

    @property
    def per_call(self) -> int:
        """Events per POST."""
        return self.batch_size if self.as_batch else 1


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    id: int
    log_id: str
    attempts: int  # including the attempt this claim is for
    created_at: datetime
    batch_id: str | None  # the failed batch it was last sent in


@dataclass(frozen=True, slots=True)
class Claim:
    target: Target
    lease_until: datetime  # also the claim's token: only its holder may settle the rows
    items: list[ClaimedItem]
    probe: bool  # the destination is failing: this is its one try for this backoff step
    calls: int  # requests it may have open at once: its share of concurrent_calls, held until settled


_TARGET_COLUMNS = [getattr(Destination, name) for name in Target.__slots__]


async def claim_due(
    conn: AsyncConnection, destination_id: int, lease: timedelta, policy: RetryPolicy
) -> Claim | None:
    """Lease the destination's due rows (oldest first) for the calls it has free, in the caller's
    short transaction.

    Due times and leases are the database's clock (db_now): a worker whose host clock runs ahead
    would otherwise take over rows whose lease has not ended, and one behind would leave them late.

    concurrent_calls holds across workers: a claim takes only the calls that the live leases leave
    free, and records on its first row the calls it may have open at once (Claim.calls, the size of
    its sender's semaphore). The UPDATE that takes the rows counts the calls in flight again and takes
    nothing if another claim came in since the read: on SQLite that statement holds the write lock;
    on PostgreSQL the destination row is locked first (SKIP LOCKED: a concurrent claim finds nothing),
    so the statement's snapshot, taken after the lock, shows every claim before it.
    A healthy destination gets enough rows for every free call; a failing one gets a single batch,
    and its backoff is pushed to the lease end so that no other worker probes it meanwhile.
    Rows older than the maximum age are moved to dead letter here instead of being sent.
    """
    now = await db_now(conn)
    claimable = await _claimable(conn, destination_id, now)
    if claimable is None:
        return None
    target, free = claimable
    probe = target.consecutive_failures > 0
    rounds = 1 if probe else free * (1 if target.per_call > 1 else SINGLE_ROUNDS)
    lease_until = now + lease
    limit = min(target.per_call * rounds, max(target.per_call, MAX_CLAIM))
    leased = await _lease(conn, target, now, lease_until, limit, free)
    items = await _drop_expired(conn, leased, now, policy)
    if not items:
        return None
    # No more calls than it has requests: a claim holds no share of the limit that it cannot use.
    calls = min(free, len(batches(items, target.per_call)))
    if items[0].id != leased[0].id or calls != free:  # a small claim, or its first row expired
        await conn.execute(update(OutboxItem).where(OutboxItem.id == items[0].id).values(lease_calls=calls))
    if probe:
        await conn.execute(
            update(Destination).where(Destination.id == destination_id).values(backoff_until=lease_until)
        )
    return Claim(target, lease_until, items, probe, calls)


async def _claimable(conn: AsyncConnection, destination_id: int, now: datetime) -> tuple[Target, int] | None:
    """The destination and its free calls, if it is enabled, not backed off, and has due rows and a
    free call. On PostgreSQL its row is locked for the claim, unless another claim holds it."""
    query = _CLAIMABLE[conn.dialect.name == "postgresql"]
    row = (await conn.execute(query, {"destination": destination_id, "now": now})).first()
    if row is None:
        return None
    target = Target(*row[:-1])
    free = target.concurrent_calls - row[-1]
    return (target, free) if free > 0 else None


async def _lease(
    conn: AsyncConnection, target: Target, now: datetime, lease_until: datetime, limit: int, calls: int
) -> list[ClaimedItem]:
    """Lease up to `limit` due rows, oldest first (PostgreSQL: skipping rows another claim holds), for
    `calls` calls, recorded on the first of them; none if the calls in flight now leave no room."""
    values = {"destination": target.id, "now": now, "until": lease_until, "limit": limit}
    values |= {"calls": calls, "concurrent_calls": target.concurrent_calls}
    result = await conn.execute(_LEASE[conn.dialect.name == "postgresql"], values)
    return sorted((ClaimedItem(*r) for r in result), key=lambda item: item.id)


async def _drop_expired(
    conn: AsyncConnection, items: list[ClaimedItem], now: datetime, policy: RetryPolicy
) -> list[ClaimedItem]:
    """Move the rows older than the maximum age to dead letter, unsent; returns the others."""
    expired = {item.id for item in items if policy.is_expired(item.created_at, now)}
    if expired:
        await conn.execute(
            update(OutboxItem)
            .where(OutboxItem.id.in_(expired))
            .values(
                **UNLEASED,
                status="dead",
                attempts=OutboxItem.attempts - 1,
                last_error=f"expired: not delivered within {policy.max_age}",
            )
        )
    return [item for item in items if item.id not in expired]


# The claim's statements take their values as parameters, so that each is built once per dialect:
# building them took about as long as running them.
_DESTINATION = bindparam("destination", type_=Integer)  # not a column name: the UPDATE takes it
_NOW = bindparam("now", type_=UTCDateTime())


def _due() -> ColumnElement[bool]:
    """The destination's rows to send now: open, due, and under no live lease."""
    return and_(
        OutboxItem.destination_id == _DESTINATION,
        OutboxItem.status.in_(OPEN),
        OutboxItem.next_attempt_at <= _NOW,
        or_(OutboxItem.lease_until.is_(None), OutboxItem.lease_until <= _NOW),
    )


def _calls_in_flight() -> ScalarSelect[int]:
    """The calls that the destination's live leases may have open, by whatever worker: each claim's
    own count, on its first row. A lease that its worker left behind (it died) counts until it ends."""
    held = select(func.coalesce(func.sum(OutboxItem.lease_calls), 0)).where(
        OutboxItem.destination_id == _DESTINATION,
        OutboxItem.lease_calls.is_not(None),  # the index of claims: one entry per claim, not per row
        OutboxItem.lease_until > _NOW,
    )
    return held.scalar_subquery()


def _claimable_query(postgres: bool) -> Select[Any]:
    wanted = select(*_TARGET_COLUMNS, _calls_in_flight()).where(
        Destination.id == _DESTINATION,
        Destination.enabled.is_(True),
        or_(Destination.backoff_until.is_(None), Destination.backoff_until <= _NOW),
        exists().where(_due()),  # an idle poll stays a read: no write lock, no UPDATE
    )
    if postgres:
        # NO KEY UPDATE: ingest's foreign-key checks (KEY SHARE) on this row are never blocked.
        wanted = wanted.with_for_update(skip_locked=True, key_share=True)
    return wanted


def _lease_query(postgres: bool) -> ReturningUpdate[int, str, int, datetime, str | None]:
    due = select(OutboxItem.id).where(_due()).order_by(OutboxItem.id).limit(bindparam("limit", type_=Integer))
    if postgres:
        due = due.with_for_update(skip_locked=True)
    picked = due.subquery()
    first = func.row_number().over(order_by=picked.c.id) == 1
    ranked = select(picked.c.id, first.label("first")).subquery()
    calls = bindparam("calls", type_=Integer)
    # Counted again by the statement that takes the rows: another claim may have come in since the read.
    room = _calls_in_flight() + calls <= bindparam("concurrent_calls", type_=Integer)
    return (
        update(OutboxItem)
        .where(OutboxItem.id == ranked.c.id, room)
        .values(
            lease_until=bindparam("until", type_=UTCDateTime()),
            lease_calls=case((ranked.c.first, calls), else_=None),
            attempts=OutboxItem.attempts + 1,
            last_attempt_at=_NOW,
        )
        .returning(
            OutboxItem.id, OutboxItem.log_id, OutboxItem.attempts, OutboxItem.created_at, OutboxItem.batch_id
        )
    )


_CLAIMABLE = {postgres: _claimable_query(postgres) for postgres in (False, True)}
_LEASE = {postgres: _lease_query(postgres) for postgres in (False, True)}


def batches(items: Sequence[ClaimedItem], size: int) -> list[list[ClaimedItem]]:
    """A claim's rows in requests of up to `size`, oldest first. The rows of a batch that failed go
    together again, and alone: its retry carries the same events under the same webhook-id."""
    groups: dict[str | None, list[ClaimedItem]] = defaultdict(list)
    for item in items:
        groups[item.batch_id].append(item)
    chunks = [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]
    return sorted(chunks, key=lambda chunk: chunk[0].id)


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
