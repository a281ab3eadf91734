"""Normalise events into rows and store them: insert-or-ignore plus outbox rows, in the caller's
transaction. This module never commits; the group committer and the poller do.

The store is synchronous SQL on a plain Connection: on SQLite the group committer runs a whole
transaction of it on its writer thread, and async callers run it with `AsyncConnection.run_sync`."""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from app.auth0.catalog import category_of
from app.auth0.stream.event import StreamEvent, UnencodableEvent, encode, verbatim
from app.auth0.stream.parsed import Rejected
from app.db import RawJSON
from app.models import QuarantinedLine
from app.outbox import destination_filters, queue, queue_items

# Longer values stay whole in `data`; the indexed copy is cut so that no index entry is oversized.
MAX_COLUMN_CHARS = 512
MAX_TYPE_CHARS = 64
MAX_LOG_ID_CHARS = 255
# A NUL character as JSON writes it: `\u0000` after an even run of backslashes (`\\u0000` is the text).
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_TEXT_COLUMNS = ("user_id", "user_name", "client_id", "client_name", "connection", "ip", "description")


@dataclass(slots=True)
class StoreResult:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass(slots=True)
class Batch:
    """What one request, or one part of a large one (or one poller page), hands to the store."""

    rows: list[dict[str, Any]]
    rejected: list[Rejected]
    source: str
    received_at: datetime
    body_sha256: str | None = None  # of the body the rejected lines are from: each is quarantined once


def to_rows(
    events: Sequence[StreamEvent], source: str, received_at: datetime
) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """One row per event; an event PostgreSQL cannot hold (a NUL character) is rejected instead."""
    rows: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    for event in events:
        if len(event.log_id) > MAX_LOG_ID_CHARS or "\x00" in event.log_id:
            reason = f"the log id is not a text of at most {MAX_LOG_ID_CHARS} characters without NUL"
            rejected.append(_refused(event, reason))
            continue
        try:
            encoded = event.encoded or encode(event.data)
        except UnencodableEvent as exc:
            rejected.append(_refused(event, str(exc)))
            continue
        if b"\\u0000" in encoded and _NUL.search(encoded):
            rejected.append(_refused(event, "contains a NUL character, which the database cannot store"))
            continue
        data = event.data
        type_ = data.get("type")
        type_ = type_[:MAX_TYPE_CHARS] if isinstance(type_, str) else None
        row = {
            "log_id": event.log_id,
            "date": parse_date(data.get("date")) or received_at,
            "type": type_,
            "category": category_of(type_),
            "data": RawJSON(encoded.decode()),
            "source": source,
            "received_at": received_at,
            "id_generated": event.id_generated,
        }
        for column in _TEXT_COLUMNS:
            value = data.get(column)
            # Inline for the common case: a short text, which slicing returns as it is.
            row[column] = value[:MAX_COLUMN_CHARS] if type(value) is str else _text(value)
        rows.append(row)
    return rows, rejected


def store_batches(conn: Connection, batches: Sequence[Batch]) -> list[StoreResult]:
    """Store several batches in one statement per table; each batch gets its own counts.

    A log id seen twice counts as stored for its first batch and as a duplicate after that.
    """
    unique: dict[str, dict[str, Any]] = {}
    for batch in batches:
        for row in batch.rows:
            unique.setdefault(row["log_id"], row)
    # Sorted keys give concurrent writers one lock order, so they never deadlock.
    rows = [unique[key] for key in sorted(unique)]
    stored = insert_events(conn, rows, queue_items(rows, destination_filters(conn)) if rows else [])
    quarantine(conn, sorted(((b, r) for b in batches for r in b.rejected), key=_line_key))

    results: list[StoreResult] = []
    for batch in batches:
        result = StoreResult(received=len(batch.rows) + len(batch.rejected), rejected=len(batch.rejected))
        for row in batch.rows:
            log_id = row["log_id"]
            if log_id in stored:
                stored.discard(log_id)
                result.stored += 1
            else:
                result.duplicates += 1
        results.append(result)
    return results


def insert_events(
    conn: Connection, rows: Sequence[dict[str, Any]], items: Sequence[dict[str, Any]] = ()
) -> set[str]:
    """INSERT ... ON CONFLICT DO NOTHING, and the outbox `items` (outbox.queue_items) of the events
    it stored, in the same transaction: the ids that were new."""
    if not rows:
        return set()
    if conn.dialect.name == "postgresql":
        # The rows go as one JSON document that PostgreSQL unpacks: one statement shape whatever the
        # row count, and orjson writes it faster than asyncpg encoded one array per column (the
        # service's CPU per event fell by about a sixth, on the event loop where it is scarce). json, not
        # jsonb: PostgreSQL only lexes it, and `data` goes into its json column as it is. The outbox
        # rows go in the same statement, for the events it stores: each statement of a transaction
        # waits for a turn of the busy event loop.
        document = orjson.dumps(rows, default=_raw_json, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
        params = {"rows": document.decode()}
        if not items:
            return set(conn.execute(_PG_JSON_INSERT, params).scalars())
        params["queue"] = orjson.dumps([{**item, "position": n} for n, item in enumerate(items)]).decode()
        return set(conn.execute(_PG_JSON_INSERT_QUEUED, params).scalars())
    # SQLite: plain tuples into a multi-row VALUES statement. SQLAlchemy's per-row parameter
    # processing was a seventh of the ingest profile, on the event loop.
    stored: set[str] = set()
    for start in range(0, len(rows), _SQLITE_ROWS_PER_STATEMENT):
        chunk = rows[start : start + _SQLITE_ROWS_PER_STATEMENT]
        inserted = conn.exec_driver_sql(_sqlite_insert(len(chunk)), _sqlite_params(chunk)).rowcount
        if inserted == len(chunk):
            stored.update(row["log_id"] for row in chunk)
        elif inserted:
            # No RETURNING: it hands each row back to Python one step, and one GIL hand-over, at a
            # time. The writer holds the write lock, so
            # the rows this statement inserted are the last `inserted` rowids (max + 1, max + 2...).
            new = conn.exec_driver_sql(_SQLITE_INSERTED, (inserted,))
            stored.update(orjson.loads(new.scalar_one()))
    if queued := [item for item in items if item["log_id"] in stored]:
        conn.execute(queue(conn.dialect.name), queued)
    return stored


_SQLITE_INSERTED = "SELECT json_group_array(log_id) FROM log_events WHERE rowid > last_insert_rowid() - ?"
_SQLITE_ROWS_PER_STATEMENT = 1000  # 15 columns each: well under SQLite's 32,766 variables


@lru_cache(maxsize=32)
def _sqlite_insert(count: int) -> str:
    row = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
    return (
        f"INSERT INTO log_events ({', '.join(_COLUMNS)}) VALUES {', '.join([row] * count)} "
        "ON CONFLICT (log_id) DO NOTHING"
    )


def _sqlite_params(rows: Sequence[dict[str, Any]]) -> tuple[Any, ...]:
    """The rows' values in _COLUMNS order, for _sqlite_insert. This runs on the SQLite writer thread,
    ingest's bottleneck, so each row is one itemgetter call, and each distinct datetime (a batch's rows
    share their received_at) is formatted once: 2.2 µs each, most of the cost."""
    params: list[Any] = []
    formatted: dict[datetime, str] = {}
    for row in rows:
        values = list(_column_values(row))
        for index in _DATETIME_INDEXES:
            value = values[index]
            if (as_text := formatted.get(value)) is None:
                as_text = formatted[value] = _sqlite_datetime(value)
            values[index] = as_text
        params += values
    return tuple(params)


def _sqlite_datetime(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


_COLUMNS = {
    "log_id": "text",
    "date": "timestamptz",
    "type": "text",
    "category": "text",
    "user_id": "text",
    "user_name": "text",
    "client_id": "text",
    "client_name": "text",
    "connection": "text",
    "ip": "text",
    "description": "text",
    "data": "json",
    "source": "text",
    "received_at": "timestamptz",
    "id_generated": "boolean",
}
_column_values = operator.itemgetter(*_COLUMNS)
_DATETIME_INDEXES = tuple(index for index, kind in enumerate(_COLUMNS.values()) if kind == "timestamptz")
_PG_INSERT_SQL = (
    f"INSERT INTO log_events ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(_COLUMNS)} FROM json_to_recordset(CAST(:rows AS json)) "
    f"AS u({', '.join(f'{name} {kind}' for name, kind in _COLUMNS.items())}) "
    "ON CONFLICT (log_id) DO NOTHING RETURNING log_id"
)
_PG_JSON_INSERT = text(_PG_INSERT_SQL)
# The same, and the outbox rows (outbox.new_item, created and due now, as outbox.queue makes them) of
# the events it stored, in their order: a data-modifying WITH runs whether or not it is read.
_PG_JSON_INSERT_QUEUED = text(
    f"WITH new AS ({_PG_INSERT_SQL}), queued AS ("
    "INSERT INTO outbox_items (destination_id, log_id, status, attempts, created_at, next_attempt_at) "
    "SELECT q.destination_id, q.log_id, q.status, q.attempts, now(), now() "
    "FROM json_to_recordset(CAST(:queue AS json)) "
    "AS q(destination_id integer, log_id text, status text, attempts integer, position integer) "
    "JOIN new USING (log_id) ORDER BY q.position) "
    "SELECT log_id FROM new"
)


def _raw_json(value: object) -> orjson.Fragment:
    if type(value) is RawJSON:
        return orjson.Fragment(str(value))  # Fragment takes exact str, not a subclass
    raise TypeError(f"cannot encode {type(value).__name__}")


def quarantine(conn: Connection, items: Sequence[tuple[Batch, Rejected]]) -> None:
    """Keep each rejected line, once per body: a line of a body already seen (resent) is not kept again."""
    if items:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(
            insert(QuarantinedLine).on_conflict_do_nothing(index_elements=["body_sha256", "line_no"]),
            [
                {
                    "source": batch.source,
                    "received_at": batch.received_at,
                    "line_no": r.position,
                    "reason": r.reason,
                    "raw": r.raw,
                    "body_sha256": batch.body_sha256,
                }
                for batch, r in items
            ],
        )


def _line_key(line: tuple[Batch, Rejected]) -> tuple[str, int]:
    # A line is kept once per body, so two writers may insert the same lines: in one order, as events.
    return line[0].body_sha256 or "", line[1].position


def _refused(event: StreamEvent, reason: str) -> Rejected:
    return Rejected(event.position, reason, event.raw or verbatim(event.item or event.data))


def parse_date(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # unparseable, or outside datetime's range once in UTC
        return None


def _text(value: object) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_COLUMN_CHARS]
