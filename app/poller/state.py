"""The poller's checkpoint row (poller_state): the checkpoint, START_FROM as applied, when the daily
report went and when the next pass may start. Functions take a connection and never commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.auth0.management import date_of_log_id
from app.models import LogEvent, PollerState
from app.poller.lease import HELD, KEY, Lease, LeaseLost

STATE = "default"


@dataclass(slots=True)
class State:
    checkpoint: str | None
    start_from: str | None
    last_report_at: datetime | None
    resume_at: datetime | None = None


async def ensure_state(conn: AsyncConnection) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(PollerState).values(name=STATE, updated_at=datetime.now(UTC))
    await conn.execute(statement.on_conflict_do_nothing(index_elements=["name"]))


async def load_state(conn: AsyncConnection) -> State:
    columns = (
        PollerState.checkpoint,
        PollerState.start_from,
        PollerState.last_report_at,
        PollerState.resume_at,
    )
    row = (await conn.execute(select(*columns).where(PollerState.name == STATE))).first()
    return State(*row) if row else State(None, None, None)


async def save_checkpoint(
    conn: AsyncConnection, lease: Lease, checkpoint: str | None, start_from: str | None
) -> None:
    """Move the checkpoint in the caller's (storing) transaction; LeaseLost if the lease is gone."""
    now = datetime.now(UTC)
    values: dict[str, object] = {"checkpoint": checkpoint, "start_from": start_from, "updated_at": now}
    statement = update(PollerState).where(PollerState.name == STATE)
    if lease.owner is not None:
        statement = statement.where(PollerState.lease_owner == lease.owner)
        values["lease_until"] = now + timedelta(seconds=lease.seconds)
    if lease.pid is not None:
        # The lock's connection may have dropped (an idle timeout, a proxy), and another pass taken it.
        held = await conn.scalar(text(HELD.format(holder=" AND pid = :pid")), KEY | {"pid": lease.pid})
        if not held:
            raise LeaseLost("this pass lost its advisory lock; this page was not stored")
    result = await conn.execute(statement.values(**values))
    if result.rowcount != 1:
        raise LeaseLost("another poller pass took over the lease; this page was not stored")


async def checkpoint_date(conn: AsyncConnection, checkpoint: str | None) -> datetime | None:
    """When the checkpoint's log was written: from the id itself, else from the stored event."""
    if checkpoint is None:
        return None
    if at := date_of_log_id(checkpoint):
        return at
    stored: datetime | None = await conn.scalar(select(LogEvent.date).where(LogEvent.log_id == checkpoint))
    return stored


async def set_resume_at(conn: AsyncConnection, at: datetime | None) -> None:
    """When the next pass may start (a rate limit ended this one), or None: at once."""
    await conn.execute(update(PollerState).where(PollerState.name == STATE).values(resume_at=at))


async def mark_reported(conn: AsyncConnection, at: datetime) -> None:
    await conn.execute(update(PollerState).where(PollerState.name == STATE).values(last_report_at=at))
