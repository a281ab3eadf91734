"""The query API: GET /api/events (filtered keyset pages), one event, the JSON Lines export, stats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import StreamingResponse

from app.api.deps import ContextDep, IsoDateTime, ReadAuth, StrictQuery, limited_read, utc_range
from app.api.event_models import ERRORS, NOT_FOUND, Event, EventPage, Stats
from app.auth0.catalog import Category
from app.cursor import MAX_CURSOR_LENGTH, decode_cursor, encode_cursor
from app.errors import NotFound, Unprocessable
from app.query import (
    EventQuery,
    Interval,
    count_events,
    export_lines,
    get_event,
    iso_z,
    list_events,
)
from app.responses import JSONResponse

router = APIRouter(tags=["events"], dependencies=[ReadAuth, StrictQuery], responses=ERRORS)

MAX_TYPES = 50
# The most buckets one stats answer holds (an hour for 90 days, or a day for 5 years).
MAX_BUCKETS = 2200


def _text(description: str, example: str) -> Any:
    return Query(description=description, examples=[example], min_length=1, max_length=512)


def event_query(
    type: Annotated[
        list[str] | None,
        Query(
            description="Auth0 log type codes; repeat the parameter or separate codes with commas "
            "(any of them matches).",
            examples=[["f", "fp"], ["s,ssa"]],
        ),
    ] = None,
    category: Annotated[
        Category | None,
        Query(description="The category of the log type, from logrelay's catalogue.", examples=["failure"]),
    ] = None,
    user_id: Annotated[str | None, _text("Exact user id.", "auth0|5f7c8ec7c33c6c004bbafe82")] = None,
    user_name: Annotated[str | None, _text("Exact user name (often the email).", "dev@example.com")] = None,
    client_id: Annotated[
        str | None, _text("Exact application client id.", "aCbTAJNi5HbsjPJtRpSP6BIoLPOrSj2C")
    ] = None,
    connection: Annotated[
        str | None, _text("Exact connection name.", "Username-Password-Authentication")
    ] = None,
    ip: Annotated[str | None, _text("Exact client IP address.", "81.2.69.143")] = None,
    since: Annotated[
        IsoDateTime | None,
        Query(
            description="Events dated at or after this instant (ISO 8601; no offset means UTC).",
            examples=["2026-11-01T00:00:00Z"],
        ),
    ] = None,
    until: Annotated[
        IsoDateTime | None,
        Query(
            description="Events dated before this instant (ISO 8601; no offset means UTC).",
            examples=["2026-11-23T00:00:00Z"],
        ),
    ] = None,
    q: Annotated[
        str | None,
        Query(
            description="Case-insensitive substring of the description or the user name "
            "(% and _ are matched literally).",
            examples=["wrong password"],
            min_length=1,
            max_length=200,
        ),
    ] = None,
) -> EventQuery:
    """The filters shared by the list, the export and the stats."""
    types = tuple(dict.fromkeys(c.strip() for part in type or () for c in part.split(",") if c.strip()))
    if type is not None and not types:
        raise _invalid("type", "names no type code")
    if len(types) > MAX_TYPES:
        raise _invalid("type", f"at most {MAX_TYPES} type codes")
    if any(len(code) > 64 for code in types):
        raise _invalid("type", "a type code is at most 64 characters")
    texts = {"user_id": user_id, "user_name": user_name, "client_id": client_id, "connection": connection}
    texts |= {"ip": ip, "q": q, "type": ",".join(types)}
    for name, value in texts.items():
        if value and "\x00" in value:  # PostgreSQL refuses NUL in text; no stored value holds one
            raise _invalid(name, "must not contain a NUL character")
    since, until = utc_range(since, until)
    return EventQuery(types, category, user_id, user_name, client_id, connection, ip, since, until, q)


Filters = Annotated[EventQuery, Depends(event_query)]


@router.get("/api/events", response_model=EventPage, summary="List events")
async def list_events_route(
    context: ContextDep,
    query: Filters,
    limit: Annotated[int, Query(ge=1, le=1000, description="Events per page.", examples=[100])] = 100,
    cursor: Annotated[
        str | None,
        Query(
            description="`next_cursor` from the previous page; omit it for the newest events.",
            examples=["AQAGYO6oKOgAOTAwMjAyNjExMjMxMDAwMDAwMDAwMDAwMDAwMDFr62vapoHPPA"],
            max_length=MAX_CURSOR_LENGTH,
        ),
    ] = None,
) -> JSONResponse:
    """Stored events, newest first, filtered and paged by cursor."""
    after = decode_cursor(cursor) if cursor else None
    async with limited_read(context, "query") as conn:
        page = await list_events(conn, query, limit, after)
    next_cursor = encode_cursor(page.next) if page.next else None
    return JSONResponse({"events": page.events, "next_cursor": next_cursor})


# Declared before /api/events/{log_id}, which would otherwise take "export" for a log id.
@router.get(
    "/api/events/export",
    summary="Export events as JSON Lines",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One event per line (the same object as in `events`), newest first.",
            "content": {"application/x-ndjson": {"example": '{"log_id": "9002...", "type": "f", ...}\n'}},
        }
    },
)
async def export_events(context: ContextDep, query: Filters) -> StreamingResponse:
    """Every matching event as JSON Lines, streamed in constant memory."""
    lines = export_lines(context.engine, query, context.settings.query_timeout)
    # The first page is read before the 200 is sent: a database that does not answer is a 503, and a
    # page past QUERY_TIMEOUT a 504, not an empty 200 cut short. A later page that fails ends the
    # stream without its last chunk, which clients report as an error, not as a complete export.
    first = await anext(lines, b"")
    return StreamingResponse(_prepend(first, lines), media_type="application/x-ndjson")


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


@router.get("/api/events/{log_id:path}", response_model=Event, responses=NOT_FOUND, summary="Get one event")
async def get_event_route(
    context: ContextDep,
    log_id: Annotated[
        str, Path(description="The Auth0 log id.", max_length=255, examples=["90020261123100000000000000001"])
    ],
) -> JSONResponse:
    """One stored event by its log id."""
    if "\x00" in log_id:  # no stored id holds one, and PostgreSQL refuses it in a query
        raise NotFound(f"no event with log_id {log_id!r}")
    async with limited_read(context, "query") as conn:
        event = await get_event(conn, log_id)
    if event is None:
        raise NotFound(f"no event with log_id {log_id!r}")
    return JSONResponse(event)


@router.get("/api/stats", response_model=Stats, summary="Count events")
async def stats_route(
    context: ContextDep,
    query: Filters,
    interval: Annotated[
        Interval, Query(description="Bucket width; buckets start on the UTC hour or day.", examples=["hour"])
    ] = "hour",
) -> JSONResponse:
    """Event counts per type and per category, per hour or day (default: the last 24 hours or 30 days)."""
    width = timedelta(hours=1) if interval == "hour" else timedelta(days=1)
    until = query.until or datetime.now(UTC)
    try:
        since = query.since or until - width * (24 if interval == "hour" else 30)
    except OverflowError:
        raise _invalid("until", "is too early to count back from") from None
    if since >= until:
        raise _invalid("since", "must be earlier than until (default: now)")
    if (until - since) / width > MAX_BUCKETS:
        raise _invalid("since", f"the range holds more than {MAX_BUCKETS} {interval} buckets")
    bounded = replace(query, since=since, until=until)
    async with limited_read(context, "query") as conn:
        counts = await count_events(conn, bounded, interval)
    buckets = [
        {"start": start, "total": sum(c["by_type"].values()), **c} for start, c in counts.buckets.items()
    ]
    return JSONResponse(
        {
            "interval": interval,
            "since": iso_z(since),
            "until": iso_z(until),
            "total": counts.total,
            "by_category": counts.by_category,
            "by_type": counts.by_type,
            "buckets": buckets,
        }
    )


def _invalid(parameter: str, message: str) -> Unprocessable:
    return Unprocessable([{"parameter": parameter, "message": message}])
