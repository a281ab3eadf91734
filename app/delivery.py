"""Delivery: claim due outbox rows, POST them outside any transaction, record what happened.

Each destination runs its own small loop, so a slow or unreachable destination holds up only itself.
Delivery is at least once: a worker that dies after sending but before recording leaves its rows
leased, and they are sent again when the lease expires (receivers deduplicate by `webhook-id`/log id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select
from standardwebhooks import Webhook

from app import outbox
from app.context import USER_AGENT, Context
from app.destinations import signing_key
from app.models import Destination, LogEvent
from app.outbox import Claim, ClaimedItem, Target
from app.payloads import message_id, render_body
from app.retry import Outcome, RetryPolicy, excerpt, parse_retry_after, verdict_of
from app.stopping import wait_or_stop

log = logging.getLogger(__name__)

ERROR_BODY_BYTES = 2048  # read this much of a failed answer for `last_error`
PURGE_EVERY = 600.0  # seconds between purges of old delivered rows
PURGE_CHUNK = 5000


async def deliver_once(context: Context) -> int:
    """One round for every enabled destination, concurrently; returns the rows settled."""
    counts = await asyncio.gather(
        *(deliver_destination_once(context, d) for d in await enabled_destination_ids(context))
    )
    return sum(counts)


async def deliver_destination_once(context: Context, destination_id: int) -> int:
    """Claim (short transaction), send (no transaction), record (short transaction)."""
    settings = context.settings
    policy = RetryPolicy.from_settings(settings)
    async with context.engine.begin() as conn:
        claim = await outbox.claim_due(conn, destination_id, _now(), settings.delivery_lease, policy)
    if claim is None:
        return 0
    events = await _load_events(context, [item.log_id for item in claim.items])
    sendable = [item for item in claim.items if item.log_id in events]
    missing = [item for item in claim.items if item.log_id not in events]
    per_call = claim.target.per_call
    chunks = [sendable[i : i + per_call] for i in range(0, len(sendable), per_call)]
    slots = asyncio.Semaphore(claim.target.concurrent_calls)
    down = asyncio.Event()

    async def send_chunk(chunk: list[ClaimedItem]) -> tuple[list[ClaimedItem], Outcome | None]:
        async with slots:
            if down.is_set():  # the destination is failing: the rest of the round waits, unsent
                return chunk, None
            outcome = await send(context, claim.target, [(i.log_id, events[i.log_id]) for i in chunk])
            if verdict_of(outcome) == "retry":
                down.set()
            return chunk, outcome

    results = await asyncio.gather(*(send_chunk(chunk) for chunk in chunks))
    async with context.engine.begin() as conn:
        if missing:
            await outbox.release(conn, claim, missing, "the event is no longer stored")
        if results:
            await outbox.record_outcomes(conn, claim, results, _now(), policy)
    _log_round(claim, results)
    return len(claim.items)


async def send(context: Context, target: Target, events: Sequence[tuple[str, dict[str, Any]]]) -> Outcome:
    """POST one request to the destination and turn whatever happens into an Outcome."""
    as_batch = target.per_call > 1
    body = render_body(target.kind, target.payload, events, as_batch)
    headers = signed_headers(target, body, message_id([log_id for log_id, _ in events], as_batch))
    timeout = context.settings.delivery_timeout
    try:
        # httpx's timeout bounds each phase; asyncio's bounds the whole call (a slow-drip receiver).
        async with (
            asyncio.timeout(timeout),
            context.http.stream(
                "POST", target.url, content=body, headers=headers, timeout=timeout
            ) as response,
        ):
            # Read (a bounded part of) every answer: a drained connection is reused for the next call.
            answer = await _read_some(response)
            if response.is_success:
                return Outcome(response.status_code)
            retry_after = parse_retry_after(response.headers.get("retry-after"), _now())
            return Outcome(response.status_code, excerpt(answer) or None, retry_after)
    except (httpx.TimeoutException, TimeoutError):
        return Outcome(None, f"timed out after {timeout:g}s")
    except httpx.HTTPError as exc:
        # The exception text names the failure (refused, reset, DNS), never our headers.
        return Outcome(None, excerpt(f"{type(exc).__name__}: {exc}"))


def signed_headers(target: Target, body: bytes, msg_id: str) -> dict[str, str]:
    """Content-Type, User-Agent, the Authorization value verbatim, and the Standard Webhooks headers."""
    sent_at = datetime.now(UTC).replace(microsecond=0)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
    }
    if target.authorization:
        headers["Authorization"] = target.authorization
    if target.signing_secret:
        webhook = Webhook(signing_key(target.signing_secret))
        headers["webhook-signature"] = webhook.sign(msg_id, sent_at, body.decode())
    return headers


async def run_delivery_loop(context: Context, stop: asyncio.Event) -> None:
    """Keep one delivery loop per enabled destination until `stop` is set; purge old deliveries."""
    loops: dict[int, asyncio.Task[None]] = {}
    enabled: set[int] = set()
    next_purge = 0.0
    try:
        while not stop.is_set():
            try:
                ids = await enabled_destination_ids(context)
                enabled.clear()  # mutated in place: the destination loops watch this set
                enabled.update(ids)
                if time.monotonic() >= next_purge:
                    await purge_delivered(context)
                    next_purge = time.monotonic() + PURGE_EVERY
            except Exception:
                log.exception("could not list destinations or purge old deliveries")
            for destination_id in enabled:
                task = loops.get(destination_id)
                if task is None or task.done():
                    loops[destination_id] = asyncio.create_task(
                        _destination_loop(context, destination_id, enabled, stop)
                    )
            await wait_or_stop(stop, context.settings.delivery_poll_interval)
    finally:
        # A send cut short leaves its rows leased; they are sent again after the lease.
        for task in loops.values():
            task.cancel()
        for task in loops.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _destination_loop(
    context: Context, destination_id: int, enabled: set[int], stop: asyncio.Event
) -> None:
    interval = context.settings.delivery_poll_interval
    while not stop.is_set() and destination_id in enabled:
        try:
            settled = await deliver_destination_once(context, destination_id)
        except Exception:
            log.exception("delivery round failed", extra={"destination_id": destination_id})
            settled = 0
        if not settled:
            await wait_or_stop(stop, interval)


async def purge_delivered(context: Context) -> int:
    """Drop rows delivered longer ago than DELIVERY_KEEP_DELIVERED, a chunk per short transaction."""
    before = _now() - context.settings.delivery_keep_delivered
    total = 0
    while True:
        async with context.engine.begin() as conn:
            purged = await outbox.purge_delivered(conn, before, PURGE_CHUNK)
        total += purged
        if purged < PURGE_CHUNK:
            return total


async def enabled_destination_ids(context: Context) -> list[int]:
    async with context.engine.connect() as conn:
        result = await conn.execute(
            select(Destination.id).where(Destination.enabled.is_(True)).order_by(Destination.id)
        )
        return list(result.scalars())


async def _load_events(context: Context, log_ids: list[str]) -> dict[str, dict[str, Any]]:
    async with context.engine.connect() as conn:
        rows = await conn.execute(select(LogEvent.log_id, LogEvent.data).where(LogEvent.log_id.in_(log_ids)))
        return {row.log_id: row.data for row in rows}


async def _read_some(response: httpx.Response) -> str:
    chunks: list[bytes] = []
    size = 0
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_BYTES:
                break
    return b"".join(chunks)[:ERROR_BODY_BYTES].decode(errors="replace")


def _log_round(claim: Claim, results: Sequence[tuple[Sequence[ClaimedItem], Outcome | None]]) -> None:
    failed = [outcome for _, outcome in results if outcome is not None and not outcome.is_success]
    if failed:
        log.warning(
            "delivery failed",
            extra={
                "destination": claim.target.name,
                "requests": len(results),
                "failed": len(failed),
                "status_code": failed[-1].status_code,
                "probe": claim.probe,
            },
        )


def _now() -> datetime:
    return datetime.now(UTC)
