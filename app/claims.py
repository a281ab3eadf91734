"""Claims: leasing a destination's due outbox rows for a delivery round, within its concurrent_calls.

A claim takes, in the caller's short transaction, the rows due now (oldest first) for the calls the
destination has free across every worker, and leases them: the lease end is also the claim's token,
which settling (outbox.record_outcomes) checks. Nothing here commits or makes an HTTP call.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    ScalarSelect,
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningUpdate

from app.db import db_now
from app.models import Destination, OutboxItem, UTCDateTime
from app.outbox import OPEN, UNLEASED
from app.retry import RetryPolicy

# Single mode claims a few rounds of calls at once, so that one claim feeds each of its calls.
SINGLE_ROUNDS = 4
MAX_CLAIM = 5000  # rows one claim may lease, whatever batch size x concurrent calls asks for


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
    leased = await _lease(conn, target, now, lease_until, limit, free, probe)
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
    conn: AsyncConnection,
    target: Target,
    now: datetime,
    lease_until: datetime,
    limit: int,
    calls: int,
    probe: bool,
) -> list[ClaimedItem]:
    """Lease up to `limit` due rows, oldest first (PostgreSQL: skipping rows another claim holds), for
    `calls` calls, recorded on the first of them; none if the calls in flight now leave no room.
    A probe leases only the rows that go in the oldest row's request (see _lease_query)."""
    values = {"destination": target.id, "now": now, "until": lease_until, "limit": limit}
    values |= {"calls": calls, "concurrent_calls": target.concurrent_calls}
    result = await conn.execute(_LEASE[conn.dialect.name == "postgresql", probe], values)
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


def _lease_query(postgres: bool, probe: bool) -> ReturningUpdate[int, str, int, datetime, str | None]:
    columns = [OutboxItem.id, OutboxItem.batch_id] if probe else [OutboxItem.id]
    due = select(*columns).where(_due()).order_by(OutboxItem.id).limit(bindparam("limit", type_=Integer))
    if postgres:
        due = due.with_for_update(skip_locked=True)
    picked = due.subquery()
    first = func.row_number().over(order_by=picked.c.id) == 1
    ranked = select(picked.c.id, first.label("first"))
    if probe:
        # A probe is one request, not one per batch among its rows: the rows that go with the oldest,
        # its failed batch (again alone, under the same webhook-id) or rows never sent (batches()).
        oldest_batch = func.first_value(picked.c.batch_id).over(order_by=picked.c.id)
        ranked = ranked.add_columns(picked.c.batch_id.is_not_distinct_from(oldest_batch).label("with_oldest"))
    taken = ranked.subquery()
    calls = bindparam("calls", type_=Integer)
    # Counted again by the statement that takes the rows: another claim may have come in since the read.
    room = _calls_in_flight() + calls <= bindparam("concurrent_calls", type_=Integer)
    wanted = [OutboxItem.id == taken.c.id, room] + ([taken.c.with_oldest] if probe else [])
    return (
        update(OutboxItem)
        .where(*wanted)
        .values(
            lease_until=bindparam("until", type_=UTCDateTime()),
            lease_calls=case((taken.c.first, calls), else_=None),
            attempts=OutboxItem.attempts + 1,
            last_attempt_at=_NOW,
        )
        .returning(
            OutboxItem.id, OutboxItem.log_id, OutboxItem.attempts, OutboxItem.created_at, OutboxItem.batch_id
        )
    )


_CLAIMABLE = {postgres: _claimable_query(postgres) for postgres in (False, True)}
_LEASE = {
    (postgres, probe): _lease_query(postgres, probe) for postgres in (False, True) for probe in (False, True)
}


def batches(items: Sequence[ClaimedItem], size: int) -> list[list[ClaimedItem]]:
    """A claim's rows in requests of up to `size`, oldest first. The rows of a batch that failed go
    together again, and alone: its retry carries the same events under the same webhook-id."""
    groups: dict[str | None, list[ClaimedItem]] = defaultdict(list)
    for item in items:
        groups[item.batch_id].append(item)
    chunks = [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]
    return sorted(chunks, key=lambda chunk: chunk[0].id)
