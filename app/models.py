"""Tables. One Alembic history (migrations/) creates them on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its rowid.
BigID = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both dialects (SQLite keeps no offset, so it is stored as naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def _where(condition: str) -> dict[str, Any]:
    """A partial index on both dialects."""
    return {"sqlite_where": text(condition), "postgresql_where": text(condition)}


class LogEvent(Base):
    """One Auth0 log event, stored once whatever route it came by."""

    __tablename__ = "log_events"

    log_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    date: Mapped[datetime] = mapped_column(UTCDateTime())
    type: Mapped[str | None] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str | None] = mapped_column(String(512))
    user_name: Mapped[str | None] = mapped_column(String(512))
    client_id: Mapped[str | None] = mapped_column(String(512))
    client_name: Mapped[str | None] = mapped_column(String(512))
    connection: Mapped[str | None] = mapped_column(String(512))
    ip: Mapped[str | None] = mapped_column(String(512))
    description: Mapped[str | None] = mapped_column(String(512))
    # json, not jsonb, on PostgreSQL: kept as the text it was stored with, which reads return as they
    # are; nothing queries inside it, and parsing it into jsonb on every insert held back ingest (README).
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # True when the event carried no log id and is keyed by a hash of its content.
    id_generated: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        # Pages are read newest first in (date, log_id) order. Each index is the narrowest that
        # serves its filter in that order: (column, date); ties on one date are sorted by log_id
        # after the seek. Every secondary index slows ingest, so events without a value get no
        # entry (partial indexes), and category has small indexes for the two rare categories only:
        # "other", the bulk of a tenant's events, is read from the date index. See query.py.
        Index(None, "date"),
        Index(None, "type", "date"),
        Index("ix_log_events_failure_date", "date", **_where("category = 'failure'")),
        Index("ix_log_events_warning_date", "date", **_where("category = 'warning'")),
        Index(None, "user_id", "date", **_where("user_id IS NOT NULL")),
        Index(None, "user_name", "date", **_where("user_name IS NOT NULL")),
        Index(None, "client_id", "date", **_where("client_id IS NOT NULL")),
        Index(None, "connection", "date", **_where("connection IS NOT NULL")),
        Index(None, "ip", "date", **_where("ip IS NOT NULL")),
        # client_name and description have no index: no query filters on them alone (`q` reads
        # description as a substring, which no B-tree serves), and the two cost about a tenth of
        # the raw insert rate.
    )


class QuarantinedLine(Base):
    """Input that could not be stored as an event, kept verbatim so that nothing is lost."""

    __tablename__ = "quarantined_lines"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    source: Mapped[str] = mapped_column(String(16))
    line_no: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    # The SHA-256 of the stream body it came in: with line_no, what makes a body sent again (Auth0
    # retrying one answered 503 after some of its parts were stored) quarantine each line once.
    body_sha256: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index(None, "body_sha256", "line_no", unique=True),)


class Destination(Base):
    """A relay target. `authorization` and the signing secrets are write-only through the API."""

    __tablename__ = "destinations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="http")  # http | slack
    url: Mapped[str] = mapped_column(Text)
    authorization: Mapped[str | None] = mapped_column(Text)
    signing_secret: Mapped[str | None] = mapped_column(Text)
    # A rotated-out secret still signs beside the new one until then, so receivers switch over safely.
    previous_signing_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    headers: Mapped[dict[str, str] | None] = mapped_column(JSON)  # extra headers; values are secrets
    # Filter: an event matches when its type is in `types` or its category in `categories`
    # (both empty: every event), and, when `api_endpoints` is set, its request path is under one.
    types: Mapped[list[str]] = mapped_column(JSON, default=list)
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    api_endpoints: Mapped[list[str] | None] = mapped_column(JSON)
    payload: Mapped[str] = mapped_column(String(32), default="event")
    send_as_batch: Mapped[bool] = mapped_column(Boolean, default=True)
    batch_size: Mapped[int] = mapped_column(Integer, default=100)
    concurrent_calls: Mapped[int] = mapped_column(Integer, default=5)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    origin: Mapped[str] = mapped_column(String(16), default="api")  # api | env
    # Destination-wide health and backoff: while it fails, only one probe batch is sent per backoff step.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    backoff_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class OutboxItem(Base):
    """One event queued for one destination, written in the transaction that stores the event."""

    __tablename__ = "outbox_items"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    destination_id: Mapped[int] = mapped_column(ForeignKey("destinations.id", ondelete="CASCADE"))
    log_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|failed|delivered|dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The calls its claim may have open at once, on the claim's first row only (NULL on the others and
    # once settled), so that a sum over live leases counts each claim once (outbox.calls_in_flight).
    lease_calls: Mapped[int | None] = mapped_column(Integer)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    # The webhook-id of the batch that carried this row and failed: its retries send that same batch
    # again, so that the id a receiver may have seen stays the id of the same events.
    batch_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index(None, "status", "next_attempt_at"),
        Index(None, "destination_id", "status", "next_attempt_at"),
        Index(None, "destination_id", "log_id"),  # replay: which of a page's events wait already
        # The calls in flight: one entry per live claim (its first row), so it stays tiny, ingest never
        # writes to it, and neither do the claim's other rows (on PostgreSQL their lease stays a HOT update).
        Index("ix_outbox_items_claims", "destination_id", **_where("lease_calls IS NOT NULL")),
    )


class PollerState(Base):
    """The poller's checkpoint: moved only in the transaction that stores the page it ends."""

    __tablename__ = "poller_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    checkpoint: Mapped[str | None] = mapped_column(String(255))
    start_from: Mapped[str | None] = mapped_column(String(255))
    last_report_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # SQLite has no advisory lock: a pass holds this lease, and every checkpoint write checks it. The
    # owner is `token:pid:host` (app.poller.owners.new_lease_owner); older releases wrote the token alone.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The Management API token, shared by every process (cron's `poll --once` included) until it is
    # due for renewal; the key is a digest of the domain and credentials it was issued for.
    access_token: Mapped[str | None] = mapped_column(Text)
    access_token_key: Mapped[str | None] = mapped_column(String(64))
    access_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    access_token_renew_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A rate limit ended the last pass: no pass starts before this, in any process.
    resume_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PollerRun(Base):
    __tablename__ = "poller_runs"

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    start_checkpoint: Mapped[str | None] = mapped_column(String(255))
    end_checkpoint: Mapped[str | None] = mapped_column(String(255))
    logs_read: Mapped[int] = mapped_column(Integer, default=0)
    stored: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    warning: Mapped[str | None] = mapped_column(Text)
    # True when the pass read until Auth0 had nothing newer (lag is then the time since it ended,
    # whatever the log dates).
    caught_up: Mapped[bool] = mapped_column(Boolean, default=False)
