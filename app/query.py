"""Reading stored events: filters, keyset pages, the export stream and counts. SQL only, read-only.

Pages run newest first in (date, log_id) order and continue strictly after the last event shown, so
events that arrive while a client pages never shift what it has yet to read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import (
    Row,
    Select,
    String,
    Text,
    and_,
    cast,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from app import query_timeout
from app.auth0.catalog import CATEGORIES, Category
from app.cursor import Position
from app.models import LogEvent

Interval = Literal["hour", "day"]
EXPORT_PAGE = 1000

_FIELDS = (
    LogEvent.log_id,
    LogEvent.date,
    LogEvent.type,
    LogEvent.category,
    LogEvent.user_id,
    LogEvent.user_name,
    LogEvent.client_id,
    LogEvent.client_name,
    LogEvent.connection,
    LogEvent.ip,
    LogEvent.description,
    LogEvent.source,
    LogEvent.received_at,
    LogEvent.id_generated,
)
# `data` as JSON text, which answers embed without decoding and encoding it again: SQLite stores it as
# text already, and so does PostgreSQL's json column (cast, or asyncpg would decode it).
_COLUMNS: dict[str, tuple[Any, ...]] = {
    "sqlite": (*_FIELDS, type_coerce(LogEvent.data, Text).label("data")),
    "postgresql": (*_FIELDS, cast(LogEvent.data, Text).label("data")),
}
# Plain str keys in column order: a row of the merged (UNION) statement names its columns with a str
# subclass, which orjson refuses as a key.
_KEYS = (*(column.key for column in _FIELDS), "data")
_NEWEST_FIRST = (LogEvent.date.desc(), LogEvent.log_id.desc())
# Filters in the order their index should lead a scan: one user's or one IP's events are few; a
# client, a connection or a type may hold most of a tenant's events.
_PREFERENCE = ("user_id", "user_name", "ip", "client_id", "connection", "type", "category")


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters that combine with AND. `since` is inclusive and `until` exclusive."""

    types: tuple[str, ...] = ()
    category: Category | None = None
    user_id: str | None = None
    user_name: str | None = None
    client_id: str | None = None
    connection: str | None = None
    ip: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None

    def driver(self) -> str | None:
        """The column whose index should lead the scan: the filter likely to be the most selective."""
        present = {name: getattr(self, name) is not None for name in _PREFERENCE[:5]}
        present |= {"type": bool(self.types), "category": self.category is not None}
        return next((name for name in _PREFERENCE if present[name]), None)

    def conditions(self, dialect: str, *, with_types: bool = True) -> list[ColumnElement[bool]]:
        driver = self.driver()

        def column(name: str) -> ColumnElement[Any]:
            # SQLite plans from statistics that a live database may never have gathered (nothing
            # runs ANALYZE) and may then lead with a broad index, e.g. a common type over one user's
            # events; a unary `+` keeps a column out of index selection, so the preferred filter's
            # index leads. PostgreSQL keeps ANALYZE statistics and chooses by itself.
            if dialect == "sqlite" and name != driver:
                return literal_column(f"+{LogEvent.__tablename__}.{name}", String)
            return getattr(LogEvent, name)  # type: ignore[no-any-return]

        where: list[ColumnElement[bool]] = []
        if self.types and with_types:
            if len(self.types) == 1:
                where.append(column("type") == self.types[0])
            else:
                where.append(column("type").in_(self.types))
        if self.category is not None:
            assert self.category in CATEGORIES
            # A literal, not a bound parameter, so that both planners can match the partial
            # per-category indexes (a parameter's value is unknown when the plan is made).
            category: ColumnElement[str] = literal_column(f"'{self.category}'", String)
            if dialect == "postgresql" and driver != "category":
                # With a narrower filter present, PostgreSQL would still favour the failure index
                # (its date order matches the table's) and read thousands of other users' failures.
                # `IN (c, '')` ('' is no category) no longer matches that index's predicate, yet is
                # estimated from the column statistics, so the narrower filter's index leads.
                where.append(LogEvent.category.in_([category, literal_column("''")]))
            else:
                where.append(column("category") == category)
        for name in ("user_id", "user_name", "client_id", "connection", "ip"):
            value = getattr(self, name)
            if value is not None:
                where.append(column(name) == value)
        if self.since is not None:
            where.append(LogEvent.date >= self.since)
        if self.until is not None:
            where.append(LogEvent.date < self.until)
        if self.q:
            pattern = f"%{escape_like(self.q)}%"
            where.append(
                or_(
                    LogEvent.description.ilike(pattern, escape="\\"),
                    LogEvent.user_name.ilike(pattern, escape="\\"),
                )
            )
        return where


@dataclass(slots=True)
class Page:
    events: list[dict[str, Any]]
    next: Position | None


@dataclass(slots=True)
class Counts:
    """Counts per bucket start (ISO 8601 UTC), each per type and per category."""

    by_type: dict[str, int] = field(default_factory=dict)
    by_category: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    total: int = 0


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def iso_z(value: datetime) -> str:
    """ISO 8601 in UTC with a Z; milliseconds as Auth0 writes them, microseconds only when present."""
    value = value.astimezone(UTC)
    spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def to_event(row: Row[Any]) -> dict[str, Any]:
    event = dict(zip(_KEYS, row, strict=True))
    event["date"] = iso_z(row.date)
    event["received_at"] = iso_z(row.received_at)
    event["id_generated"] = bool(row.id_generated)
    event["data"] = orjson.Fragment(row.data)
    return event


def page_statement(dialect: str, query: EventQuery, limit: int, after: Position | None) -> Select[Any]:
    columns = _COLUMNS[dialect]
    merge = len(query.types) > 1 and query.driver() == "type"
    where = query.conditions(dialect, with_types=not merge)
    if after is not None:
        # `date <= d` bounds the index range; the OR only breaks ties within one date.
        where.append(
            and_(LogEvent.date <= after.date, or_(LogEvent.date < after.date, LogEvent.log_id < after.log_id))
        )
    if merge:
        # One ordered, limited scan of the (type, date) index per code, merged: an IN list would
        # read every event of every code and sort them all before the limit applies. The branches
        # carry keys only, so that the rows the merge drops (all but `limit` of `limit` per code) are
        # never read whole; the page's rows are then read once, by key.
        branches = [
            select(
                select(LogEvent.date, LogEvent.log_id)
                .where(*where, LogEvent.type == code)
                .order_by(*_NEWEST_FIRST)
                .limit(limit)
                .subquery()
            )
            for code in query.types
        ]
        merged = union_all(*branches).subquery("merged")
        newest = (merged.c.date.desc(), merged.c.log_id.desc())
        page = select(merged).order_by(*newest).limit(limit).subquery("page")
        return (
            select(*columns)
            .join(page, LogEvent.log_id == page.c.log_id)
            .order_by(page.c.date.desc(), page.c.log_id.desc())
        )
    return select(*columns).where(*where).order_by(*_NEWEST_FIRST).limit(limit)


async def list_events(conn: AsyncConnection, query: EventQuery, limit: int, after: Position | None) -> Page:
    """One page, and the position to continue from when more events follow it."""
    statement = page_statement(conn.dialect.name, query, limit + 1, after)
    rows = (await conn.execute(statement)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    last = Position(rows[-1].date, rows[-1].log_id) if more else None
    return Page([to_event(row) for row in rows], last)


async def get_event(conn: AsyncConnection, log_id: str) -> dict[str, Any] | None:
    statement = select(*_COLUMNS[conn.dialect.name]).where(LogEvent.log_id == log_id)
    row = (await conn.execute(statement)).first()
    return to_event(row) if row else None


async def export_lines(
    engine: AsyncEngine, query: EventQuery, time_limit: float | None, page: int = EXPORT_PAGE
) -> AsyncIterator[bytes]:
    """Every matching event as JSON Lines, newest first, read one keyset page at a time.

    Each page is its own short read, so memory stays constant and no transaction stays open while a
    slow client drains the stream; `time_limit` applies to each page, since a whole export of a large
    store may rightly take minutes.
    """
    after: Position | None = None
    while True:
        async with query_timeout.reading(engine, "query", time_limit) as conn:
            statement = page_statement(conn.dialect.name, query, page, after)
            rows: Sequence[Row[Any]] = (await conn.execute(statement)).all()
        if not rows:
            return
        yield b"".join(orjson.dumps(to_event(row)) + b"\n" for row in rows)
        if len(rows) < page:
            return
        after = Position(rows[-1].date, rows[-1].log_id)


async def count_events(conn: AsyncConnection, query: EventQuery, interval: Interval) -> Counts:
    """Counts per interval bucket, type and category, grouped in SQL."""
    bucket = _bucket(conn.dialect.name, interval).label("bucket")
    statement = (
        select(bucket, LogEvent.type, LogEvent.category, func.count().label("n"))
        .where(*query.conditions(conn.dialect.name))
        .group_by(bucket, LogEvent.type, LogEvent.category)
        .order_by(bucket)
    )
    counts = Counts()
    for start, type_, category, n in await conn.execute(statement):
        code = type_ or "unknown"
        counts.total += n
        counts.by_type[code] = counts.by_type.get(code, 0) + n
        counts.by_category[category] = counts.by_category.get(category, 0) + n
        slot = counts.buckets.setdefault(start, {"by_type": {}, "by_category": {}})
        slot["by_type"][code] = slot["by_type"].get(code, 0) + n
        slot["by_category"][category] = slot["by_category"].get(category, 0) + n
    return counts


def _bucket(dialect: str, interval: Interval) -> ColumnElement[str]:
    """The bucket start as ISO 8601 UTC text, computed by the database."""
    if dialect == "sqlite":  # dates are stored as naive UTC text
        fmt = "%Y-%m-%dT%H:00:00.000Z" if interval == "hour" else "%Y-%m-%dT00:00:00.000Z"
        return func.strftime(fmt, LogEvent.date)
    truncated = func.date_trunc(interval, LogEvent.date, "UTC")
    return func.to_char(func.timezone("UTC", truncated), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
