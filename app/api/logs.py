"""POST /api/logs: the Auth0 Custom Webhook log stream receiver."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from app import metrics
from app.api.deps import authorize
from app.api.error_docs import Responses, error
from app.auth0.stream.body import parse_body
from app.auth0.stream.parsed import BodyError, Framing, ParsedBody, Rejected
from app.auth0.stream.parts import parse_parts
from app.config import Settings
from app.context import Context
from app.errors import (
    AppError,
    BadRequest,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
    render_error,
)
from app.ingest import Batch, StoreResult, to_rows
from app.responses import JSONResponse

log = logging.getLogger(__name__)
router = APIRouter(tags=["ingest"])
PATH = "/api/logs"

# Bodies larger than this, and gzip ones, are parsed and made into rows on a thread, so that the event
# loop keeps serving; a smaller one costs less inline than the hand-over. A body larger than this once
# inflated is also read a part at a time (parse_parts): read whole, a 16 MiB body of small events took
# over 1 GB. A smaller one costs less read whole, and its objects are few.
_LARGE_BODY_BYTES = 256 * 1024

_RESPONSES: Responses = {
    200: {
        "description": "Every event is committed. Bad lines or items are counted and quarantined, "
        "and the first 100 listed (`errors_omitted`: how many more).",
        "content": {
            "application/json": {
                "example": {
                    "received": 3,
                    "stored": 1,
                    "duplicates": 1,
                    "rejected": 1,
                    "errors": [{"line": 2, "reason": "invalid JSON at column 1: unexpected character"}],
                    "quarantined": 1,
                }
            }
        },
    },
    400: error("The body is not JSON (or empty, a scalar, bad gzip); `detail` names the line or offset."),
    401: error("A missing or wrong token."),
    403: error("API_TOKEN or ADMIN_TOKEN, which cannot ingest."),
    413: error("The body (or its decompressed form) exceeds MAX_BODY_BYTES."),
    415: error("A Content-Encoding that lists a coding other than gzip (or identity)."),
    503: error("The database did not take the events; the sender should retry."),
}
# The route reads its body itself (FastAPI sees no body parameter), so the document says what it takes.
_BODY = {
    "required": True,
    "description": "JSON Lines (one event per line, as Auth0 sends it, also labelled application/json), "
    'a JSON array of events, or a JSON object: `{"logs": [...]}` or one event. '
    "`Content-Encoding: gzip` is accepted.",
    "content": {
        "application/json": {
            # Any array: items that are not events are quarantined, not refused, even with no event.
            "schema": {"anyOf": [{"type": "array"}, {"type": "object"}]},
            "example": {
                "log_id": "90020261123100000000000000001",
                "data": {
                    "date": "2026-11-23T10:00:00.000Z",
                    "type": "fp",
                    "log_id": "90020261123100000000000000001",
                },
            },
        }
    },
}


@router.post(PATH, response_class=JSONResponse, responses=_RESPONSES, openapi_extra={"requestBody": _BODY})
async def receive_logs(request: Request) -> JSONResponse:
    """Store a log stream body (JSON Lines, array or object); answers after the commit."""
    # Takes only the Request, so IngestFastPath can call it without FastAPI's routing.
    context: Context = request.app.state.context
    authorize(context, "ingest", request.headers.get("authorization"))
    settings = context.settings
    body, gzipped = await read_body(request, settings.max_body_bytes)
    tally = _Tally()
    batches = _batches(body, gzipped, settings, datetime.now(UTC), tally)
    # A gzip body may inflate to MAX_BODY_BYTES whatever its own size.
    off_loop = gzipped or len(body) > _LARGE_BODY_BYTES
    stored = duplicates = 0
    # Each batch is committed before the next is made, and the answer waits for them all: a 2xx still
    # means every event is stored. Should one fail, the sender sends the body again, and what was
    # stored of it is found again by log id (and its rejected lines by the body's digest).
    while True:
        batch = await asyncio.to_thread(next, batches, None) if off_loop else next(batches, None)
        if batch is None:
            break
        try:
            result = await context.committer.store(batch)
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable(f"the database did not take the events ({type(exc).__name__}); retry") from None
        del batch  # its rows go before the next part is read
        metrics.count_events("stream", StoreResult(stored=result.stored, duplicates=result.duplicates))
        stored += result.stored
        duplicates += result.duplicates
        off_loop = tally.in_parts  # a body read whole has no work left for a thread
    metrics.count_events("stream", StoreResult(rejected=tally.rejected))
    answer: dict[str, object] = {
        "received": tally.received,
        "stored": stored,
        "duplicates": duplicates,
        "rejected": tally.rejected,
    }
    if tally.rejected:
        answer["errors"] = errors = tally.errors()
        answer["quarantined"] = tally.rejected
        if omitted := tally.rejected - len(errors):
            answer["errors_omitted"] = omitted
    return JSONResponse(answer)


# The answer lists at most this many rejected lines or items; `rejected` counts them all.
LISTED_ERRORS = 100
# A body's first this many rejected lines or items are quarantined one by one; should it have more, the
# body itself is quarantined too, once and whole, under line -1: the rest are kept in it as sent.
QUARANTINED_LINES = 1000
_Error = tuple[int, str]  # a rejected line's position and reason


@dataclass(slots=True)
class _Tally:
    """What the answer says of a body, counted as its parts are read. Of its rejected lines, only the
    first few positions and reasons are kept: 2 MiB of bad lines made an answer of 100 MB."""

    in_parts: bool = False  # read a part at a time (parse_parts), rather than whole
    framing: Framing = "jsonl"
    received: int = 0
    rejected: int = 0  # lines or items, by the parser and by to_rows
    by_parser: list[_Error] = field(default_factory=list)  # its first ones, in body order
    by_store: list[_Error] = field(default_factory=list)  # to_rows': listed after those, as ever

    def count(self, by_parser: list[Rejected], by_store: list[Rejected]) -> None:
        self.rejected += len(by_parser) + len(by_store)
        for listed, rejected in ((self.by_parser, by_parser), (self.by_store, by_store)):
            room = max(LISTED_ERRORS - len(listed), 0)
            listed.extend((r.position, r.reason) for r in rejected[:room])

    def errors(self) -> list[dict[str, object]]:
        where = _unit(self.framing)
        listed = (self.by_parser + self.by_store)[:LISTED_ERRORS]
        return [{where: position, "reason": reason} for position, reason in listed]


def _batches(
    body: bytes, gzipped: int, settings: Settings, received_at: datetime, tally: _Tally
) -> Iterator[Batch]:
    """The body's batches of at most COMMIT_MAX_ROWS lines or items, each made when asked for: a large
    body is parsed and made into rows a part at a time, so that the objects of one part only exist at
    once, and each part is one transaction however large the body. BadRequest before the first batch
    if the body is refused whole (parse_body)."""
    for _ in range(gzipped):
        body = _gunzip(body, settings.max_body_bytes)
    size = settings.commit_max_rows
    tally.in_parts = len(body) > _LARGE_BODY_BYTES
    digest: str | None = None
    try:
        if tally.in_parts:
            parts = parse_parts(body, settings.max_event_bytes, size)
        else:
            parts = _whole(body, settings.max_event_bytes)
        for part in parts:
            rows, unstorable = to_rows(part.events, "stream", received_at)
            tally.framing = part.framing
            tally.received += part.received
            before = tally.rejected
            tally.count(part.rejected, unstorable)
            kept = _quarantined(part.rejected + unstorable, before, body, tally.framing)
            if kept and digest is None:
                digest = hashlib.sha256(body).hexdigest()
            del part, unstorable  # before the next part is read
            if len(rows) + len(kept) <= size:
                if rows or kept:
                    yield Batch(rows, kept, "stream", received_at, digest)
            else:  # a body read whole
                yield from _cut(rows, kept, size, received_at, digest)
            del rows, kept
    except BodyError as exc:
        raise BadRequest(str(exc)) from None


def _whole(body: bytes, max_event_bytes: int) -> Iterator[ParsedBody]:
    """parse_body's one part, held by no one but the caller (a list iterator holds its list until the
    next call), which lets its events go before the commit is awaited: less for the event loop to
    keep, and to collect, while requests wait on commits."""
    yield parse_body(body, max_event_bytes)


def _unit(framing: Framing) -> str:
    """What a body's parts are called: lines of JSON Lines, items of an array."""
    return "line" if framing == "jsonl" else "item"


def _quarantined(rejected: list[Rejected], before: int, body: bytes, framing: Framing) -> list[Rejected]:
    """What to quarantine of `rejected`, which come after `before` others of the body: those within
    its first QUARANTINED_LINES, and with the first past them, the body whole."""
    kept = rejected[: max(QUARANTINED_LINES - before, 0)]
    if before <= QUARANTINED_LINES < before + len(rejected):
        where = _unit(framing)
        first = rejected[len(kept)].position
        reason = (
            f"the body as received: over {QUARANTINED_LINES} of its {where}s are rejected, and those "
            f"past them ({where} {first} the first) are quarantined only here"
        )
        kept.append(Rejected(-1, reason, body))
    return kept


def _cut(
    rows: list[dict[str, Any]], rejected: list[Rejected], size: int, received_at: datetime, digest: str | None
) -> Iterator[Batch]:
    """Batches of at most `size` rows and rejected lines, rows first."""
    for start in range(0, len(rows) + len(rejected), size):
        end = start + size
        lines = rejected[max(start - len(rows), 0) : max(end - len(rows), 0)]
        yield Batch(rows[start:end], lines, "stream", received_at, digest)


async def read_body(request: Request, limit: int) -> tuple[bytes, int]:
    """The request body and how many times it is gzipped, refusing more than `limit` bytes before
    reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; MAX_BODY_BYTES is {limit}")
    gzipped = _gzip_layers(request.headers.getlist("content-encoding"))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds MAX_BODY_BYTES ({limit})")
        chunks.append(chunk)
    return b"".join(chunks), gzipped


def _gzip_layers(fields: list[str]) -> int:
    """How many times the body is gzipped, from its Content-Encoding: a list of the codings applied, in
    order, over one field or several, with empty elements ignored (RFC 9110 8.4, 5.6.1). `identity`
    is no coding; any but it and gzip (`x-gzip`) is refused."""
    codings = [coding.strip().lower() for field in fields for coding in field.split(",")]
    if unknown := [coding for coding in codings if coding not in ("", "identity", "gzip", "x-gzip")]:
        raise UnsupportedMediaType(f"Content-Encoding {unknown[0]!r} is not supported; use gzip")
    return sum(coding in ("gzip", "x-gzip") for coding in codings)


def _gunzip(body: bytes, limit: int) -> bytes:
    # A gzip body may hold several members (RFC 1952 2.2), and zero bytes after one are padding:
    # inflate each, as `gzip -d` and Python's gzip module read them. Each member is fed from a view of
    # the body in chunks that start small and grow, so that what zlib copies back (the input after a
    # member's end) is at most about the member's own size: fed the whole rest of the body, 160,000
    # small members took 34 s.
    view = memoryview(body)
    parts: list[bytes] = []
    size = 0
    start = 0  # where the member being read starts in the body
    while (padding := _NOT_ZERO.search(body, start)) is not None:
        start = fed = padding.start()
        chunk = _FIRST_CHUNK
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
        while not inflater.eof:
            if fed == len(body):
                raise BadRequest("the gzip body is truncated")
            try:
                # bounded: a gzip bomb stops at the limit
                data = inflater.decompress(view[fed : fed + chunk], limit + 1 - size)
            except zlib.error as exc:
                where = f" from byte {start} on" if start else ""
                raise BadRequest(f"the body is not valid gzip{where}: {exc}") from None
            fed = min(fed + chunk, len(body))
            chunk = min(chunk * 2, _LAST_CHUNK)
            size += len(data)
            if size > limit or inflater.unconsumed_tail:
                raise PayloadTooLarge(f"the decompressed body exceeds MAX_BODY_BYTES ({limit})")
            parts.append(data)
        start = fed - len(inflater.unused_data)
    return b"".join(parts)


_NOT_ZERO = re.compile(rb"[^\0]")
_FIRST_CHUNK, _LAST_CHUNK = 256, 256 * 1024


class IngestFastPath:
    """Serves POST /api/logs ahead of FastAPI and its middleware; wraps the whole application.

    A one-event request is the one logrelay serves most, and the framework layers around a route
    (middleware, routing, request/response wrapping, exit stacks) were over half of its cost in the
    profile. The handler is the route function itself; every other request goes on to FastAPI.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # With a trailing slash too: a redirect would lose a POST from a sender that does not follow it.
        if scope["type"] != "http" or scope["path"] not in _PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # as Starlette sets it: the handler finds the context through it
        started = time.perf_counter()
        try:
            response = await receive_logs(Request(scope, receive))
        except ClientDisconnect:
            log.info("the sender went away before its body ended; nothing was stored")
            return
        except AppError as exc:
            # The sender gets the reason, but Auth0 shows it nowhere: the operator must see it here.
            log.warning("ingest refused (%s): %s", exc.status_code, exc.detail)
            response = render_error(exc)
        except Exception as exc:
            response = render_error(exc)
        metrics.count_ingest_request(response.status_code, started)
        await response(scope, receive, send)


_PATHS = frozenset({PATH, PATH + "/"})
