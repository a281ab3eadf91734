"""The Auth0 Management API poller: read tenant logs from the checkpoint, page after page, and store
each page through the same store as the stream.

Every page is fetched outside any transaction, then stored together with the checkpoint that ends it
in one transaction, so a crash at any point re-reads a page and never skips one. Only one pass runs
at a time (poller_state.hold_pass_lock). Faults end the pass with a logged error and a failed run;
they never end the process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta

import orjson

from app import poller_state, reports
from app.auth0 import management
from app.auth0.management import LogsPage, ManagementClient, ManagementError
from app.auth0.stream import to_event
from app.config import Settings
from app.context import Context, open_context
from app.ingest import Batch, store_batches, to_rows
from app.schedule import parse_schedule
from app.stopping import wait_or_stop

log = logging.getLogger(__name__)

TRANSIENT_RETRIES = 3  # a 5xx or a dropped connection is asked again this often within a pass
TRANSIENT_DELAY = 0.5  # seconds, doubled per retry
MAX_RATE_WAIT = 60.0  # never trust a reset further away than this (clock skew)
LEASE_MARGIN = 60.0  # a SQLite lease outlives the pass budget by this much


@dataclass(slots=True)
class PassResult:
    ran: bool
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    run_id: int | None = None
    start_checkpoint: str | None = None
    checkpoint: str | None = None
    logs_read: int = 0
    stored: int = 0
    pages: int = 0
    rate_limit_waits: int = 0
    caught_up: bool = False
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    alert: bool = False  # a warning Slack must hear about even when the pass succeeded

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, object]:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("warnings", "alert")}
        return shown | {"warning": "; ".join(self.warnings) or None}


class _Stopped(Exception):
    """The pass ends early without an error: budget spent, rate limit, or shutdown."""


def management_client(context: Context) -> ManagementClient:
    settings = context.settings
    base_url, secret = settings.auth0_base_url, settings.auth0_client_secret
    if not (base_url and settings.auth0_client_id and secret):
        raise ManagementError("set AUTH0_DOMAIN, AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET to poll")
    return ManagementClient(context.http, base_url, settings.auth0_client_id, secret.get_secret_value())


async def poll_once(context: Context, *, stop: asyncio.Event | None = None) -> PassResult:
    """One pass: read and store pages until Auth0 has nothing newer or POLL_MAX_RUN_SECONDS is spent.

    Returns `ran=False` at once when another pass (this or another replica) holds the lock.
    """
    settings = context.settings
    lease_seconds = settings.poll_max_run_seconds + LEASE_MARGIN
    async with poller_state.hold_pass_lock(context.engine, lease_seconds) as lease:
        if lease is None:
            log.info("poll pass skipped: another pass is running")
            return PassResult(ran=False)
        result = await _run_pass(context, lease, stop)
        assert result.ended_at is not None
        run = reports.RunReport(
            result.started_at,
            result.ended_at,
            result.logs_read,
            result.checkpoint,
            result.error,
            "; ".join(result.warnings) or None,
        )
        # Still under the lock, so that replicas never send the same report twice.
        await reports.report_pass(context, run, loud=result.alert)
        return result


async def _run_pass(context: Context, lease: poller_state.Lease, stop: asyncio.Event | None) -> PassResult:
    settings = context.settings
    result = PassResult(ran=True)
    async with context.engine.begin() as conn:
        state = await poller_state.load_state(conn)
        result.run_id = await poller_state.start_run(conn, result.started_at, state.checkpoint)
    cursor = _Cursor(state.checkpoint, state.start_from)
    if settings.start_from and settings.start_from != state.start_from:
        # Applied once, like the extensions: only when START_FROM differs from the one stored.
        cursor = _Cursor(management.start_checkpoint(settings.start_from), settings.start_from, dirty=True)
        log.info(
            "START_FROM applied", extra={"start_from": settings.start_from, "checkpoint": cursor.checkpoint}
        )
    result.start_checkpoint = result.checkpoint = cursor.checkpoint
    deadline = time.monotonic() + settings.poll_max_run_seconds
    try:
        await _read_pages(context, management_client(context), lease, cursor, result, deadline, stop)
    except _Stopped as stopped:
        if str(stopped):
            result.warnings.append(str(stopped))
    except ManagementError as exc:
        result.error = str(exc)
    except Exception as exc:  # the store or the database: the pass fails, the process goes on
        log.exception("poll pass failed")
        result.error = f"{type(exc).__name__}: {exc}"
    result.checkpoint = cursor.checkpoint
    _check_lag(settings, result)
    result.ended_at = datetime.now(UTC)
    await _record(context, result)
    return result


@dataclass(slots=True)
class _Cursor:
    checkpoint: str | None
    start_from: str | None
    dirty: bool = False  # START_FROM moved it: save even if no page follows


async def _read_pages(
    context: Context,
    client: ManagementClient,
    lease: poller_state.Lease,
    cursor: _Cursor,
    result: PassResult,
    deadline: float,
    stop: asyncio.Event | None,
) -> None:
    take = context.settings.batch_size
    fell_back = False
    while True:
        if stop is not None and stop.is_set():
            raise _Stopped("")
        if time.monotonic() >= deadline:
            raise _Stopped("")  # not a warning: the next pass continues from the checkpoint
        try:
            page = await _fetch(client, cursor.checkpoint, take, deadline, stop, result)
        except management.UnknownCheckpoint as exc:
            if fell_back:
                raise
            fell_back = True
            warning = (
                f"{exc}. It is older than Auth0's log retention: restarting from the oldest retained log; "
                "logs between the old checkpoint and that log may have been lost"
            )
            log.error("poller checkpoint unknown to Auth0", extra={"checkpoint": cursor.checkpoint})
            result.warnings.append(warning)
            result.alert = True
            cursor.checkpoint, cursor.dirty = None, False
            continue
        if not page.items:
            if cursor.dirty:
                await _save(context, lease, cursor, [], result)
            result.caught_up = True
            return
        await _save(context, lease, cursor, page.items, result)
        await _respect_rate_limit(page, deadline, stop, result)


async def _fetch(
    client: ManagementClient,
    checkpoint: str | None,
    take: int,
    deadline: float,
    stop: asyncio.Event | None,
    result: PassResult,
) -> LogsPage:
    """One page; waits out a 429 and asks again after a transient failure, within the budget."""
    failures = 0
    while True:
        try:
            return await client.get_logs(checkpoint, take)
        except management.RateLimited as exc:
            await _wait(exc.reset_at - time.time(), deadline, stop, "rate limited (429)")
            result.rate_limit_waits += 1
        except (management.Unreachable, management.ServerError) as exc:
            failures += 1
            delay = TRANSIENT_DELAY * 2 ** (failures - 1)
            if failures > TRANSIENT_RETRIES or time.monotonic() + delay > deadline:
                raise
            log.warning("Auth0 request failed; asking again", extra={"reason": str(exc), "attempt": failures})
            await asyncio.sleep(delay)


async def _respect_rate_limit(
    page: LogsPage, deadline: float, stop: asyncio.Event | None, result: PassResult
) -> None:
    """x-ratelimit-remaining 0: wait for x-ratelimit-reset before the next call rather than draw a 429."""
    if page.rate.remaining is None or page.rate.remaining > 0:
        return
    reset_in = (page.rate.reset_at or time.time() + 1) - time.time()
    await _wait(reset_in, deadline, stop, "x-ratelimit-remaining is 0")
    result.rate_limit_waits += 1


async def _wait(seconds: float, deadline: float, stop: asyncio.Event | None, why: str) -> None:
    seconds = min(max(seconds, 0.0) + 0.05, MAX_RATE_WAIT)
    if time.monotonic() + seconds > deadline:
        raise _Stopped(f"Auth0 Management API rate limit reached ({why}); the next pass continues")
    log.info("waiting for the Auth0 rate limit to reset", extra={"seconds": round(seconds, 2), "why": why})
    if stop is None:
        await asyncio.sleep(seconds)
        return
    await wait_or_stop(stop, seconds)
    if stop.is_set():
        raise _Stopped("")


async def _save(
    context: Context,
    lease: poller_state.Lease,
    cursor: _Cursor,
    items: list[dict[str, object]],
    result: PassResult,
) -> None:
    """Store one page and move the checkpoint to its end, in one transaction."""
    received_at = datetime.now(UTC)
    events = [to_event(item) for item in items]
    for event in events:
        if event.id_generated:
            log.warning(
                "Auth0 returned a log without _id or log_id; stored under a hash of its content",
                extra={"log_id": event.log_id, "type": event.data.get("type")},
            )
    ids = [e.log_id for e in events if not e.id_generated]
    if cursor.checkpoint is None and ids:
        # The first page is sorted by date, not by id: continue from its smallest id, so that a
        # log with a smaller id that the page missed is read rather than skipped.
        next_checkpoint: str | None = min(ids)
    else:
        next_checkpoint = ids[-1] if ids else cursor.checkpoint
    rows, rejected = to_rows(events, "poller", received_at)
    async with context.engine.begin() as conn:
        [stored] = await conn.run_sync(store_batches, [Batch(rows, rejected, "poller", received_at)])
        await poller_state.save_checkpoint(conn, lease, next_checkpoint, cursor.start_from)
    cursor.checkpoint, cursor.dirty = next_checkpoint, False
    result.pages += 1 if items else 0
    result.logs_read += len(items)
    result.stored += stored.stored
    result.checkpoint = next_checkpoint
    if items and not ids:
        raise ManagementError(
            f"Auth0 returned a page of {len(items)} logs without ids; the checkpoint cannot move"
        )


def _check_lag(settings: Settings, result: PassResult) -> None:
    """Warn loudly when the checkpoint trails real time by LAG_WARN_SHARE of LOG_RETENTION_DAYS."""
    checkpoint_at = management.date_of_log_id(result.checkpoint)
    if result.caught_up or checkpoint_at is None:
        return
    lag = datetime.now(UTC) - checkpoint_at
    limit = timedelta(days=settings.log_retention_days) * settings.lag_warn_share
    if lag > limit:
        warning = (
            f"the checkpoint trails real time by {_days(lag)} days, more than {settings.lag_warn_share:g} of "
            f"the {settings.log_retention_days}-day log retention: Auth0 deletes older logs for good"
        )
        log.error("poller lags behind", extra={"lag_seconds": int(lag.total_seconds())})
        result.warnings.append(warning)
        result.alert = True


async def _record(context: Context, result: PassResult) -> None:
    values = {k: v for k, v in result.as_dict().items() if k in _RUN_COLUMNS}
    values["end_checkpoint"] = result.checkpoint
    try:
        async with context.engine.begin() as conn:
            assert result.run_id is not None
            await poller_state.finish_run(conn, result.run_id, **values)
    except Exception:
        log.exception("could not record the poll run")
    level = logging.ERROR if result.error else logging.INFO
    summary = orjson.loads(orjson.dumps(result.as_dict()))
    log.log(level, "poll pass failed" if result.error else "poll pass finished", extra={"run": summary})


_RUN_COLUMNS = {"ended_at", "logs_read", "stored", "error", "warning", "caught_up"}


async def run_poller_loop(context: Context, stop: asyncio.Event) -> None:
    """Run poll passes on POLL_SCHEDULE until stopped; a pass that ran out of time is followed at once."""
    schedule = parse_schedule(context.settings.poll_schedule)
    now = datetime.now(UTC)
    next_at = now if schedule.interval is not None else schedule.next_after(now)
    while not stop.is_set():
        delay = (next_at - datetime.now(UTC)).total_seconds()
        if delay > 0:
            await wait_or_stop(stop, delay)
            continue
        try:
            result = await poll_once(context, stop=stop)
        except Exception:  # e.g. the database is down while taking the lock
            log.exception("poll pass crashed; the next one runs on schedule")
            result = PassResult(ran=False)
        behind = result.ran and result.ok and not result.caught_up
        next_at = datetime.now(UTC) if behind else schedule.next_after(datetime.now(UTC))


async def run_poll_command(settings: Settings, *, once: bool) -> int:
    """`logrelay poll [--once]`: 0 when the pass succeeded (or another pass was running), 1 when it
    failed, 2 when the poller is not configured."""
    if not settings.auth0_domain:
        print("logrelay: set AUTH0_DOMAIN, AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET to poll", file=sys.stderr)
        return 2
    try:
        async with open_context(settings) as context:
            if once:
                return _report_once(await poll_once(context))
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await run_poller_loop(context, stop)
            return 0
    except Exception as exc:  # e.g. the database does not answer: one clear line, exit 1
        log.exception("poll command failed")
        print(f"logrelay: poll failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _report_once(result: PassResult) -> int:
    print(orjson.dumps(result.as_dict()).decode(), flush=True)
    if not result.ran:
        print("logrelay: another poll pass is running; this one did nothing", file=sys.stderr)
    elif result.error:
        print(f"logrelay: poll failed: {result.error}", file=sys.stderr)
    return 0 if result.ok else 1


def _days(lag: timedelta) -> str:
    return f"{lag.total_seconds() / 86400:.1f}"
