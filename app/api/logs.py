"""POST /api/logs: the Auth0 Custom Webhook log stream receiver."""

from __future__ import annotations

import asyncio
import zlib
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from app.api.deps import ContextDep, IngestAuth
from app.auth0.stream import BodyError, ParsedBody, parse_body
from app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from app.ingest import Batch, to_rows
from app.responses import JSONResponse

router = APIRouter(tags=["ingest"])

# Bodies larger than this are parsed on a thread so that the event loop keeps serving.
_INLINE_PARSE_BYTES = 256 * 1024


@router.post("/api/logs", dependencies=[IngestAuth], response_class=JSONResponse)
async def receive_logs(request: Request, context: ContextDep) -> JSONResponse:
    """Store a log stream body (JSON Lines, array or object); answers after the commit."""
    settings = context.settings
    body = await read_body(request, settings.max_body_bytes)
    received_at = datetime.now(UTC)
    if len(body) > _INLINE_PARSE_BYTES:
        parsed = await asyncio.to_thread(_parse, body, settings.max_event_bytes)
    else:
        parsed = _parse(body, settings.max_event_bytes)
    rows, unstorable = to_rows(parsed.events, "stream", received_at)
    rejected = parsed.rejected + unstorable
    result = await context.committer.store(Batch(rows, rejected, "stream", received_at))
    answer: dict[str, object] = {
        "received": parsed.received,
        "stored": result.stored,
        "duplicates": result.duplicates,
        "rejected": result.rejected,
    }
    if rejected:
        where = "line" if parsed.framing == "jsonl" else "item"
        answer["errors"] = [{where: r.position, "reason": r.reason} for r in rejected]
        answer["quarantined"] = len(rejected)
    return JSONResponse(answer)


def _parse(body: bytes, max_event_bytes: int) -> ParsedBody:
    try:
        return parse_body(body, max_event_bytes)
    except BodyError as exc:
        raise BadRequest(str(exc)) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, refusing more than `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; MAX_BODY_BYTES is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds MAX_BODY_BYTES ({limit})")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; use gzip")
    return _gunzip(body, limit)


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    try:
        data = inflater.decompress(body, limit + 1)  # bounded: a gzip bomb stops at the limit
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid gzip: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed body exceeds MAX_BODY_BYTES ({limit})")
    if not inflater.eof:
        raise BadRequest("the gzip body is truncated")
    return data
