"""Delivery: claim due outbox rows, POST them outside any transaction, record what happened.

Each destination runs its own small loop, so a slow or unreachable destination holds up only itself.
Delivery is at least once: a worker that dies after sending but before recording leaves its rows
leased, and they are sent again when the lease expires (receivers deduplicate by `webhook-id`/log id).
A worker that is stopped lets its rounds finish (their sends are bounded by the timeout); a round
cancelled all the same records what was answered and gives the other rows back at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select
from standardwebhooks import Webhook

from app import claims, metrics, outbox
from app.claims import Claim, ClaimedItem, Target
from app.context import USER_AGENT, Context
from app.destinations import path_is_token
from app.models import Destination, LogEvent
from app.payloads import is_header_value, message_id, render_body, signing_key
from app.retry import Outcome, RetryPolicy, excerpt, parse_retry_after, verdict_of
from app.stopping import Backoff, Wait, wait_or_stop

log = logging.getLogger(__name__)

ERROR_BODY_BYTES = 2048  # read this much of a failed answer for `last_error`
MIN_MASKED_CHARS = 6
STOP_GRACE = 2.0  # seconds beyond the delivery timeout a stopping worker gives its rounds

Result = tuple[Sequence[ClaimedItem], Outcome | None]


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
        claim = await claims.claim_due(conn, destination_id, settings.delivery_lease, policy)
    if claim is None:
        return 0
    target = claim.target
    slots = asyncio.Semaphore(claim.calls)  # the share of concurrent_calls the claim holds
    down = asyncio.Event()
    chunks: list[list[ClaimedItem]] = [claim.items]  # unsent, should the load be cancelled
    tasks: list[asyncio.Task[Outcome | None]] = []
    missing: list[ClaimedItem] = []

    async def send_chunk(chunk: list[ClaimedItem]) -> Outcome | None:
        async with slots:
            if down.is_set():  # the destination is failing: the rest of the round waits, unsent
                return None
            started = time.perf_counter()
            outcome = await send(context, target, [(i.log_id, events[i.log_id]) for i in chunk])
            metrics.count_delivery(target.id, len(chunk), outcome, time.perf_counter() - started)
            if verdict_of(outcome) == "retry":
                down.set()
            return outcome

    try:
        events = await _load_events(context, [item.log_id for item in claim.items])
        sendable = [item for item in claim.items if item.log_id in events]
        missing = [item for item in claim.items if item.log_id not in events]
        chunks = claims.batches(sendable, target.per_call)
        tasks = [asyncio.create_task(send_chunk(chunk)) for chunk in chunks]
        if tasks:
            await asyncio.wait(tasks)
    except asyncio.CancelledError:  # stopping: keep what was answered, give the rest back now
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await asyncio.shield(_settle(context, claim, missing, _results(chunks, tasks), policy))
        raise
    results = _results(chunks, tasks)
    # Shielded: a stop that comes while the outcome is written does not leave the rows leased.
    await asyncio.shield(_settle(context, claim, missing, results, policy))
    _log_round(claim, results)
    return len(claim.items)


async def _settle(
    context: Context, claim: Claim, missing: list[ClaimedItem], results: list[Result], policy: RetryPolicy
) -> None:
    async with context.engine.begin() as conn:
        if missing:
            await outbox.release(conn, claim, missing, "the event is no longer stored")
        if results:
            await outbox.record_outcomes(conn, claim, results, policy)


def _results(chunks: list[list[ClaimedItem]], tasks: list[asyncio.Task[Outcome | None]]) -> list[Result]:
    """Each chunk's outcome; None for one whose send was cancelled or never began."""
    results: list[Result] = []
    for chunk, task in itertools.zip_longest(chunks, tasks):
        if task is None or task.cancelled():
            results.append((chunk, None))
        elif (error := task.exception()) is not None:  # send() catches everything: a bug of ours
            log.error("delivery send failed", exc_info=error)
            results.append((chunk, Outcome(None, f"cannot send: {type(error).__name__}", permanent=True)))
        else:
            results.append((chunk, task.result()))
    return results


async def send(context: Context, target: Target, events: Sequence[tuple[str, dict[str, Any]]]) -> Outcome:
    """POST one request to the destination and turn whatever happens into an Outcome (never raises).

    A request that cannot be built or that the HTTP library refuses to send (a bad URL or header
    value) is a permanent failure. Error texts never carry our headers: exceptions that quote them
    are recorded by type only, and secrets are masked in whatever else is recorded.
    """
    timeout = context.settings.delivery_timeout
    try:
        body = render_body(target.kind, target.payload, events, target.as_batch)
        headers = signed_headers(target, body, message_id([log_id for log_id, _ in events], target.as_batch))
        url = httpx.URL(target.url)
        if url.userinfo:  # sent as our own Authorization header (authorization_of), or not at all
            url = url.copy_with(userinfo=b"")
        request = context.http.build_request("POST", url, content=body, headers=headers, timeout=timeout)
    except Exception as exc:
        return _cannot_send(target, exc)
    response: httpx.Response | None = None
    received: list[bytes] = []  # the answer's body as it comes, kept should the rest of it time out
    try:
        # httpx's timeout bounds each phase; asyncio's bounds the whole call (a slow-drip receiver).
        async with asyncio.timeout(timeout):
            response = await context.http.send(request, stream=True)
            try:
                # Read (a bounded part of) every answer: a drained connection is reused for the next call.
                await _read_some(response, received)
            finally:
                await response.aclose()
    except Exception as exc:
        # Once the status and headers are in, they are the answer, whatever becomes of its body: a
        # 2xx is accepted, a 400 rejected, and a 503's Retry-After honoured.
        if response is None:
            return _not_sent(target, exc, timeout)
    if response.is_success:
        return Outcome(response.status_code)
    answer = b"".join(received)[:ERROR_BODY_BYTES].decode(errors="replace")
    retry_after = parse_retry_after(response.headers.get("retry-after"), _now())
    return Outcome(response.status_code, excerpt(_masked(answer, target)) or None, retry_after)


def _not_sent(target: Target, exc: Exception, timeout: float) -> Outcome:
    """The outcome of a request that got no answer."""
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return Outcome(None, f"timed out after {timeout:g}s")
    if isinstance(exc, (httpx.LocalProtocolError, httpx.UnsupportedProtocol)):
        return _cannot_send(target, exc)  # h11's text quotes the header value it refused
    if isinstance(exc, httpx.TransportError):  # refused, reset, DNS: the text names the failure
        return Outcome(None, excerpt(_masked(f"{type(exc).__name__}: {exc}", target)))
    log.warning("unexpected send error", extra={"destination": target.name, "error": type(exc).__name__})
    return Outcome(None, f"unexpected error: {type(exc).__name__}")


def _cannot_send(target: Target, exc: Exception) -> Outcome:
    """A request that can never go out: dead, with a reason that names the setting to fix."""
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
        reason = "the URL is not valid"
    elif target.authorization and not is_header_value(target.authorization):
        reason = "the Authorization value is not a valid header value"
    else:
        reason = "the request could not be built"
    return Outcome(None, f"cannot send: {reason} ({type(exc).__name__})", permanent=True)


def _masked(text: str, target: Target) -> str:
    """`text` with the destination's secrets masked (a receiver may echo our request back), in the
    form they go out in: the Authorization value we send (authorization_of) and its credentials
    alone, and the URL's query values and Slack path as sent (percent-encoded) and decoded."""
    url = httpx.URL(target.url)
    authorization = authorization_of(target) or ""
    user, password = _raw_userinfo(url)
    secrets = [authorization, target.signing_secret, target.previous_signing_secret, url.password, password]
    # Values long enough to be tokens (masking short ones, "v=1", would garble the text): the
    # Authorization credentials without their scheme, query values, a user name, extra header
    # values, and the path segments of a Slack webhook (its path is Slack's token).
    raw_path, _, raw_query = url.raw_path.decode().partition("?")
    candidates = [authorization.partition(" ")[2], url.username, user]
    candidates += [value for _, value in url.params.multi_items()]
    candidates += [pair.partition("=")[2] for pair in raw_query.split("&")]
    candidates += (target.headers or {}).values()
    if path_is_token(target.kind, url.host):
        segments = url.path.split("/") + raw_path.split("/")
        candidates += [part for part in segments if part != "services"]
    secrets += [value for value in candidates if len(value) >= MIN_MASKED_CHARS]
    # Longest first: a shorter secret inside a longer one would otherwise leave the rest of it shown.
    for secret in sorted({secret for secret in secrets if secret}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _raw_userinfo(url: httpx.URL) -> tuple[str, str]:
    """The URL's user name and password as written, percent-escapes and all."""
    user, _, password = url.userinfo.decode(errors="replace").partition(":")
    return user, password


def authorization_of(target: Target) -> str | None:
    """The Authorization value a request carries: the destination's own, else Basic credentials
    made of its URL's user:password, decoded (RFC 7617), as httpx would make them. Made here rather
    than by httpx, so that _masked masks the very value that is sent."""
    if target.authorization:
        return target.authorization
    url = httpx.URL(target.url)
    if not url.userinfo:
        return None
    return "Basic " + base64.b64encode(f"{url.username}:{url.password}".encode()).decode()


def signed_headers(target: Target, body: bytes, msg_id: str) -> dict[str, str]:
    """The destination's extra headers, Content-Type, User-Agent, the Authorization value verbatim,
    and the Standard Webhooks headers (extra headers cannot name any of these: check_headers)."""
    sent_at = datetime.now(UTC).replace(microsecond=0)
    headers = {
        **(target.headers or {}),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
    }
    if authorization := authorization_of(target):
        headers["Authorization"] = authorization
    secrets = [target.signing_secret]
    if target.previous_secret_expires_at and target.previous_secret_expires_at > sent_at:
        secrets.append(target.previous_signing_secret)  # a rotation's grace: receivers accept either
    signatures = [
        Webhook(signing_key(secret)).sign(msg_id, sent_at, body.decode()) for secret in secrets if secret
    ]
    if signatures:
        headers["webhook-signature"] = " ".join(signatures)
    return headers


async def run_delivery_loop(context: Context, stop: asyncio.Event, *, wait: Wait = wait_or_stop) -> None:
    """Keep one delivery loop per enabled destination until `stop` is set."""
    loops: dict[int, asyncio.Task[None]] = {}
    enabled: set[int] = set()
    backoff = Backoff(context.settings.delivery_poll_interval)
    try:
        while not stop.is_set():
            pause = backoff.base
            try:
                ids = await enabled_destination_ids(context)
                enabled.clear()  # mutated in place: the destination loops watch this set
                enabled.update(ids)
                backoff.succeeded()
            except Exception:
                log.exception("could not list destinations")
                pause = backoff.failed()
            for destination_id in enabled:
                task = loops.get(destination_id)
                if task is None or task.done():
                    loops[destination_id] = asyncio.create_task(
                        _destination_loop(context, destination_id, enabled, stop, wait)
                    )
            await wait(stop, pause)
    finally:
        # On stop, let each destination finish its round so that outcomes are recorded; a round still
        # running after the grace is cancelled and gives its unanswered rows back.
        running = [task for task in loops.values() if not task.done()]
        if running and stop.is_set():
            await asyncio.wait(running, timeout=context.settings.delivery_timeout + STOP_GRACE)
        for task in loops.values():
            task.cancel()
        for task in loops.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _destination_loop(
    context: Context, destination_id: int, enabled: set[int], stop: asyncio.Event, wait: Wait
) -> None:
    backoff = Backoff(context.settings.delivery_poll_interval)
    while not stop.is_set() and destination_id in enabled:
        try:
            settled = await deliver_destination_once(context, destination_id)
        except Exception:
            log.exception("delivery round failed", extra={"destination_id": destination_id})
            await wait(stop, backoff.failed())
            continue
        backoff.succeeded()
        if not settled:
            await wait(stop, backoff.base)


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


async def _read_some(response: httpx.Response, into: list[bytes]) -> None:
    """Read about ERROR_BODY_BYTES of the answer into `into`, chunk by chunk as they come."""
    size = 0
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_bytes():
            into.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_BYTES:
                break


def _log_round(claim: Claim, results: Sequence[Result]) -> None:
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
    """This host's clock, for what other workers never compare: a Retry-After date. Leases and due
    times are the database's clock (outbox, db_now)."""
    return datetime.now(UTC)
