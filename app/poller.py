"""The Auth0 Management API poller: read tenant logs from the checkpoint, page after page, and store
each page through the same store as the stream.

Every page is fetched outside any transaction, then stored together with the checkpoint that ends it
in one transaction, so a crash at any point re-reads a page and never skips one. Only one pass runs
at a time (poller_state.hold_pass_lock). Faults end the pass with a logged error and a failed run;
they never end the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from app import metrics, poller_state, reports
from app.auth0 import management
from app.auth0.management import LogsPage, ManagementClient, ManagementError
from app.auth0.stream.event import StreamEvent, to_event
from app.config import Settings
from app.context import Context, open_context
from app.ingest import Batch, parse_date, store_batches, to_rows
from app.schedule import Schedule, parse_schedule
from app.stopping import Backoff, Wait, wait_or_stop

log = logging.getLogger(__name__)

TRANSIENT_RETRIES = 3  # a 5xx or a dropped connection is asked again this often within a pass
TRANSIENT_DELAY = 0.5  # seconds, doubled per retry
MAX_RATE_WAIT = 60.0  # never trust a reset further away than this (clock skew); caps the backoff too
RATE_BACKOFF = 1.0  # seconds after a first 429 in a row, doubled for each further one
MAX_RETRY_AFTER = 3600.0  # a Retry-After is honoured up to this
LEASE_MARGIN = 60.0  # a SQLite lease outlives the pass budget by this much
BUSY_PAUSE = 5.0  # seconds before a loop looks again when another process's pass holds the lock
# A log's id carries the time Auth0 stored it, never before its date; this allows for the two clocks.
START_MARGIN = timedelta(minutes=1)


@dataclass(slots=True)
class PassResult:
    ran: bool
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    run_id: int | None = None
    start_checkpoint: str | None = None
    checkpoint: str | None = None
    logs_read: int = 0  # each log once, though the oldest logs are read twice (see _Pass._find_start)
    stored: int = 0
    pages: int = 0
    rate_limit_waits: int = 0
    caught_up: bool = False
    resume_at: datetime | None = None  # a rate limit ended the pass: the next starts no earlier
    skipped: Skipped | None = None  # why no pass ran (ran=False)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    alert: bool = False  # a warning Slack must hear about even when the pass succeeded

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, object]:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("warnings", "alert")}
        return shown | {"warning": "; ".join(self.warnings) or None}


# Why no pass ran: another pass holds the lock; resume_at is still ahead; another process ran the
# pass a loop planned (see poll_once).
Skipped = Literal["running", "rate_limited", "ran_elsewhere"]


class _Stopped(Exception):
    """The pass ends early without an error: budget spent, rate limit, or shutdown."""


def management_client(context: Context) -> ManagementClient:
    settings = context.settings
    base_url, secret = settings.auth0_base_url, settings.auth0_client_secret
    if not (base_url and settings.auth0_client_id and secret):
        raise ManagementError("set AUTH0_DOMAIN, AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET to poll")
    tokens = poller_state.SavedTokens(context.engine, management.TOKENS)
    return ManagementClient(
        context.http, base_url, settings.auth0_client_id, secret.get_secret_value(), tokens=tokens
    )


async def poll_once(
    context: Context,
    *,
    stop: asyncio.Event | None = None,
    wait: Wait = wait_or_stop,
    last_run_id: int | None = None,
) -> PassResult:
    """One pass: read and store pages until Auth0 has nothing newer or POLL_MAX_RUN_SECONDS is spent.

    Returns `ran=False` at once, `skipped` saying why, when another pass (this or another replica)
    holds the lock, when a pass that a rate limit ended said to start no earlier than a time still
    ahead (`resume_at`), or when the latest run is no longer `last_run_id` (0: none), the one a loop
    planned this pass from: another process has run it. `stop` ends the pass cleanly at the next
    page or pause.
    """
    settings = context.settings
    lease_seconds = settings.poll_max_run_seconds + LEASE_MARGIN
    async with poller_state.hold_pass_lock(context.engine, lease_seconds) as lease:
        if lease is None:
            log.info("poll pass skipped: another pass is running")
            return PassResult(ran=False, skipped="running")
        async with context.engine.connect() as conn:
            resume_at = (await poller_state.load_state(conn)).resume_at
            latest = await poller_state.last_run_id(conn) if last_run_id is not None else None
        if resume_at is not None and resume_at > datetime.now(UTC):
            log.info("poll pass skipped: the Auth0 rate limit holds", extra={"until": resume_at.isoformat()})
            return PassResult(ran=False, resume_at=resume_at, skipped="rate_limited")
        if latest != last_run_id:
            log.info("poll pass skipped: another process ran it")
            return PassResult(ran=False, skipped="ran_elsewhere")
        result = await _Pass(context, lease, stop or asyncio.Event(), wait).run()
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


@dataclass(slots=True)
class _Cursor:
    checkpoint: str | None
    start_from: str | None
    dirty: bool = False  # START_FROM moved it: save even if no page follows
    oldest_id: str | None = None  # the smallest id of the oldest logs by date, when read this pass


def rate_limit_wait(limited: management.RateLimited, in_a_row: int, now: float) -> float:
    """Seconds to wait after the `in_a_row`-th 429 in a row: until the reset (a far one is clock
    skew), at least the Retry-After, and never less than the backoff 1, 2, 4 ... s, so that a reset
    already past (skew, another bucket) cannot make the poller ask again and again."""
    backoff = min(RATE_BACKOFF * 2.0 ** min(in_a_row - 1, 16), MAX_RATE_WAIT)
    reset_in = min(limited.reset_at - now, MAX_RATE_WAIT) if limited.reset_at is not None else 0.0
    return max(backoff, reset_in, min(limited.retry_after or 0.0, MAX_RETRY_AFTER))


class _Pass:
    """One pass: the cursor, the time budget, the pauses, and the result it fills in."""

    def __init__(self, context: Context, lease: poller_state.Lease, stop: asyncio.Event, wait: Wait) -> None:
        self.context, self.settings, self.lease = context, context.settings, lease
        self.stop, self.wait = stop, wait
        self.result = PassResult(ran=True)
        self.cursor = _Cursor(None, None)
        self.deadline = 0.0
        self.warned_lost = False  # "logs may have been lost" is said once a pass

    async def run(self) -> PassResult:
        settings, result = self.settings, self.result
        async with self.context.engine.begin() as conn:
            await _close_abandoned_runs(conn, datetime.now(UTC))
            state = await poller_state.load_state(conn)
            result.run_id = await poller_state.start_run(conn, result.started_at, state.checkpoint)
            self.cursor = _Cursor(state.checkpoint, state.start_from)
            if settings.start_from and settings.start_from != state.start_from:
                # Applied once, like the extensions: only when START_FROM differs from the one stored.
                checkpoint = management.start_checkpoint(settings.start_from)
                self.cursor = _Cursor(checkpoint, settings.start_from, dirty=True)
                log.info(
                    "START_FROM applied", extra={"start_from": settings.start_from, "checkpoint": checkpoint}
                )
            written_at = await poller_state.checkpoint_date(conn, self.cursor.checkpoint)
        result.start_checkpoint = result.checkpoint = self.cursor.checkpoint
        self._check_retention(written_at)
        self.deadline = time.monotonic() + settings.poll_max_run_seconds
        try:
            await self._read_pages(management_client(self.context))
        except _Stopped as stopped:
            if str(stopped):
                result.warnings.append(str(stopped))
        except ManagementError as exc:
            result.error = str(exc)
        except Exception as exc:  # the store or the database: the pass fails, the process goes on
            log.exception("poll pass failed")
            result.error = f"{type(exc).__name__}: {exc}"
        result.checkpoint = self.cursor.checkpoint
        _check_lag(settings, result)
        result.ended_at = datetime.now(UTC)
        await _record(self.context, result)
        return result

    def _check_retention(self, written_at: datetime | None) -> None:
        """Auth0 may answer an aged-out `from` with the oldest logs it still has instead of a 400, so
        a checkpoint older than the retention is said to lose logs before anything is read."""
        days = self.settings.log_retention_days
        if written_at is None or datetime.now(UTC) - written_at <= timedelta(days=days):
            return
        checkpoint = self.cursor.checkpoint
        log.error(
            "poller checkpoint is older than the log retention",
            extra={"checkpoint": checkpoint, "checkpoint_date": written_at.isoformat()},
        )
        self._lost(
            f"the checkpoint {checkpoint} dates from {written_at:%Y-%m-%d %H:%M:%S} UTC, older than the "
            f"{days}-day log retention: logs between it and the oldest log Auth0 still keeps may have "
            "been lost"
        )

    def _lost(self, warning: str) -> None:
        if not self.warned_lost:
            self.result.warnings.append(warning)
        self.warned_lost = self.result.alert = True

    async def _read_pages(self, client: ManagementClient) -> None:
        cursor = self.cursor
        fell_back = False
        while True:
            if self.stop.is_set() or time.monotonic() >= self.deadline:
                raise _Stopped("")  # not a warning: the next pass continues from the checkpoint
            if cursor.checkpoint is None:
                if not await self._find_start(client):
                    self.result.caught_up = True  # Auth0 keeps no logs
                    return
                continue
            try:
                page = await self._fetch(client)
            except management.UnknownCheckpoint as exc:
                if management.is_date_checkpoint(cursor.checkpoint):
                    await self._start_at_oldest(str(exc))
                    continue
                if fell_back:
                    raise
                fell_back = True
                log.error("poller checkpoint unknown to Auth0", extra={"checkpoint": cursor.checkpoint})
                self._lost(
                    f"{exc}. It is older than Auth0's log retention: restarting from the oldest retained "
                    "log; logs between the old checkpoint and that log may have been lost"
                )
                cursor.checkpoint, cursor.dirty = None, False
                continue
            if not page.items:
                if cursor.dirty:
                    await self._save([], [])
                self.result.caught_up = True
                return
            await self._save(*_events(page.items))
            await self._respect_rate_limit(page)

    async def _find_start(self, client: ManagementClient) -> bool:
        """With no checkpoint: store the oldest logs by date, and go on by id from their earliest date
        (less START_MARGIN), as START_FROM's date form does. Their own smallest id would skip a log
        stored before them but dated after them, which has a smaller id than all of them; no log is
        stored before its date, so none has an id before that start. False when Auth0 keeps no logs.

        Read again by id, these logs count then; the one at the smallest id counts now if Auth0
        refuses that start and reading goes on from it instead (it is not read again)."""
        page = await self._fetch(client)
        if not page.items:
            return False
        events, ids = _events(page.items)
        if not ids:
            await self._save(events, ids)  # stores them under a hash, and fails the pass
        dates = [at for item in page.items if (at := parse_date(item.get("date"))) is not None]
        id_dates = [at for log_id in ids if (at := management.date_of_log_id(log_id)) is not None]
        if dates and len(id_dates) == len(ids):
            earliest = min([*dates, *id_dates])
            self.cursor.oldest_id = min(ids)
            await self._store(events, management.log_id_at(earliest - START_MARGIN), read=0)
        else:  # ids of another shape, or no dates: as the extensions did
            self.cursor.oldest_id = None
            await self._store(events, min(ids), read=1)
        await self._respect_rate_limit(page)
        return True

    async def _start_at_oldest(self, why: str) -> None:
        """Auth0 refused a checkpoint made from a date (START_FROM's, or _find_start's), as it may one
        before its oldest log: no log was read from there, so none is lost. Go on from the oldest
        logs' smallest id when this pass has stored them, else from the oldest retained log."""
        cursor = self.cursor
        if cursor.oldest_id is None:
            log.info(
                "Auth0 refused a checkpoint made from a date; reading from its oldest log",
                extra={"reason": why},
            )
            cursor.checkpoint, cursor.dirty = None, False
            return
        # A log stored before the oldest logs but dated after them is then out of reach.
        log.warning(
            "Auth0 refused a checkpoint made from a date; reading on from its oldest logs' smallest id",
            extra={"reason": why},
        )
        oldest_id, cursor.oldest_id = cursor.oldest_id, None
        await self._store([], oldest_id, read=1)  # that log is stored and not read again

    async def _fetch(self, client: ManagementClient) -> LogsPage:
        """One page; waits out a 429 and asks again after a transient failure, within the budget."""
        take = min(self.settings.batch_size, management.MAX_TAKE)
        failures = limited = 0
        while True:
            try:
                return await client.get_logs(self.cursor.checkpoint, take)
            except management.RateLimited as exc:
                limited += 1
                await self._wait_for_rate_limit(rate_limit_wait(exc, limited, time.time()), str(exc))
                self.result.rate_limit_waits += 1
            except (management.Unreachable, management.ServerError) as exc:
                failures += 1
                delay = TRANSIENT_DELAY * 2 ** (failures - 1)
                if failures > TRANSIENT_RETRIES or time.monotonic() + delay > self.deadline:
                    raise
                log.warning(
                    "Auth0 request failed; asking again", extra={"reason": str(exc), "attempt": failures}
                )
                await self._pause(delay)

    async def _respect_rate_limit(self, page: LogsPage) -> None:
        """x-ratelimit-remaining 0: wait for x-ratelimit-reset before the next call rather than draw a 429."""
        if page.rate.remaining is None or page.rate.remaining > 0:
            return
        now = time.time()
        reset_in = (page.rate.reset_at or now + 1) - now
        await self._wait_for_rate_limit(
            min(max(reset_in, 0.0) + 0.05, MAX_RATE_WAIT), "x-ratelimit-remaining is 0"
        )
        self.result.rate_limit_waits += 1

    async def _wait_for_rate_limit(self, seconds: float, why: str) -> None:
        if time.monotonic() + seconds > self.deadline:
            resume_at = datetime.now(UTC) + timedelta(seconds=seconds)
            self.result.resume_at = resume_at
            raise _Stopped(
                f"Auth0 Management API rate limit reached ({why}); the next pass starts no earlier "
                f"than {resume_at.isoformat(timespec='seconds')}"
            )
        log.info(
            "waiting for the Auth0 rate limit to reset", extra={"seconds": round(seconds, 2), "why": why}
        )
        await self._pause(seconds)

    async def _pause(self, seconds: float) -> None:
        await self.wait(self.stop, seconds)
        if self.stop.is_set():
            raise _Stopped("")

    async def _save(self, events: list[StreamEvent], ids: list[str]) -> None:
        """Store one page read by id and move the checkpoint to its end."""
        await self._store(events, ids[-1] if ids else self.cursor.checkpoint, read=len(events))
        if events and not ids:
            raise ManagementError(
                f"Auth0 returned a page of {len(events)} logs without ids; the checkpoint cannot move"
            )

    async def _store(self, events: list[StreamEvent], checkpoint: str | None, *, read: int) -> None:
        """Store the events and move the checkpoint, in one transaction; `read` logs count as read."""
        cursor, result = self.cursor, self.result
        received_at = datetime.now(UTC)
        rows, rejected = to_rows(events, "poller", received_at)
        async with self.context.engine.begin() as conn:
            [stored] = await conn.run_sync(store_batches, [Batch(rows, rejected, "poller", received_at)])
            await poller_state.save_checkpoint(conn, self.lease, checkpoint, cursor.start_from)
        metrics.count_events("poller", stored)
        cursor.checkpoint, cursor.dirty = checkpoint, False
        result.pages += 1 if events else 0
        result.logs_read += read
        result.stored += stored.stored
        result.checkpoint = checkpoint


def _events(items: list[dict[str, Any]]) -> tuple[list[StreamEvent], list[str]]:
    """The items as events, and the ids Auth0 gave them (a log without one is stored under a hash)."""
    events = [to_event(item) for item in items]
    for event in events:
        if event.id_generated:
            log.warning(
                "Auth0 returned a log without _id or log_id; stored under a hash of its content",
                extra={"log_id": event.log_id, "type": event.data.get("type")},
            )
    return events, [e.log_id for e in events if not e.id_generated]


async def _close_abandoned_runs(conn: AsyncConnection, now: datetime) -> None:
    """This pass holds the lock, so a run still open belongs to a process that stopped mid-pass;
    closed here, it no longer shows as a pass that never ends."""
    if closed := await poller_state.close_abandoned_runs(conn, now):
        log.error("closed poll runs whose process stopped before they finished", extra={"runs": closed})


def _check_lag(settings: Settings, result: PassResult) -> None:
    """Warn loudly when the checkpoint trails real time by LAG_WARN_SHARE of LOG_RETENTION_DAYS."""
    checkpoint_at = management.date_of_log_id(result.checkpoint)
    if result.caught_up or checkpoint_at is None:
        return
    lag = datetime.now(UTC) - checkpoint_at
    limit = settings.poller_lag_limit
    if lag > limit:
        warning = (
            f"the checkpoint trails real time by {_days(lag)} days, more than {settings.lag_warn_share:g} of "
            f"the {settings.log_retention_days}-day log retention: Auth0 deletes older logs for good"
        )
        log.error("poller lags behind", extra={"lag_seconds": int(lag.total_seconds())})
        result.warnings.append(warning)
        result.alert = True


async def _record(context: Context, result: PassResult) -> None:
    """Close the run row and prune the run history, in one transaction."""
    values = {k: v for k, v in result.as_dict().items() if k in _RUN_COLUMNS}
    values["end_checkpoint"] = result.checkpoint
    retention = timedelta(days=context.settings.log_retention_days)
    try:
        async with context.engine.begin() as conn:
            assert result.run_id is not None
            assert result.ended_at is not None
            await poller_state.finish_run(conn, result.run_id, **values)
            await poller_state.set_resume_at(conn, result.resume_at)
            await poller_state.prune_runs(conn, result.ended_at, retention)
    except Exception:
        log.exception("could not record the poll run")
    level = logging.ERROR if result.error else logging.INFO
    summary = orjson.loads(orjson.dumps(result.as_dict()))
    log.log(level, "poll pass failed" if result.error else "poll pass finished", extra={"run": summary})


_RUN_COLUMNS = {"ended_at", "logs_read", "stored", "error", "warning", "caught_up"}


async def run_poller_loop(context: Context, stop: asyncio.Event, *, wait: Wait = wait_or_stop) -> None:
    """Run poll passes on POLL_SCHEDULE until stopped. The schedule runs from the latest run that any
    process recorded, so that `serve --workers N` and replicas poll once a period between them, not
    once each; a pass that ran out of time is followed at once, and one that a rate limit ended no
    earlier than the reset."""
    schedule = parse_schedule(context.settings.poll_schedule)
    backoff = Backoff(1.0)
    while not stop.is_set():
        try:
            pause = await _poll_when_due(context, schedule, stop, wait)
            backoff.succeeded()
        except Exception:  # e.g. the database is down while planning or taking the lock
            log.exception("poll pass crashed; trying again")
            pause = backoff.failed()
        if pause > 0:
            await wait(stop, pause)


async def _poll_when_due(context: Context, schedule: Schedule, stop: asyncio.Event, wait: Wait) -> float:
    """Run a pass if one is due; the seconds to wait before looking again."""
    async with context.engine.connect() as conn:
        last = await poller_state.last_run(conn)
        resume_at = (await poller_state.load_state(conn)).resume_at
    now = datetime.now(UTC)
    due = max(next_pass_at(schedule, last, now), resume_at or now)
    if due > now:
        # Looked at again then: another process may run a pass meanwhile, and move the schedule.
        return (due - now).total_seconds()
    result = await poll_once(context, stop=stop, wait=wait, last_run_id=last.id if last else 0)
    return BUSY_PAUSE if result.skipped == "running" else 0.0


def next_pass_at(schedule: Schedule, last: Row[Any] | None, now: datetime) -> datetime:
    """When the pass after `last`, the latest run (whichever process ran it), is due."""
    if last is None:
        return now if schedule.interval is not None else schedule.next_after(now)
    started: datetime = last.started_at
    ended: datetime | None = last.ended_at
    if ended is not None and last.error is None and not last.caught_up:
        return now  # it ran out of time, or was stopped (a rate limit's resume_at is kept apart)
    if schedule.interval is not None:
        return (ended or started) + schedule.interval
    return schedule.next_after(started)


async def run_poll_command(settings: Settings, *, once: bool) -> int:
    """`logrelay poll [--once]`: 0 when the pass succeeded (or did not run: another pass was running,
    or a rate limit's reset is ahead), 1 when it failed, 2 when the poller is not configured.
    SIGINT/SIGTERM end the pass cleanly in both modes."""
    if not settings.auth0_domain:
        print("logrelay: set AUTH0_DOMAIN, AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET to poll", file=sys.stderr)
        return 2
    try:
        async with open_context(settings) as context, _stop_on_signals() as stop:
            if once:
                return _report_once(await poll_once(context, stop=stop))
            await run_poller_loop(context, stop)
            return 0
    except Exception as exc:  # e.g. the database does not answer: one clear line, exit 1
        log.exception("poll command failed")
        print(f"logrelay: poll failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


@contextlib.asynccontextmanager
async def _stop_on_signals() -> AsyncIterator[asyncio.Event]:
    """An event SIGINT and SIGTERM set, so that the pass releases its lease and closes its run."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _report_once(result: PassResult) -> int:
    print(orjson.dumps(result.as_dict()).decode(), flush=True)
    if result.skipped == "rate_limited" and result.resume_at is not None:
        until = result.resume_at.isoformat(timespec="seconds")
        print(f"logrelay: the Auth0 rate limit holds until {until}; this run did nothing", file=sys.stderr)
    elif not result.ran:
        print("logrelay: another poll pass is running; this one did nothing", file=sys.stderr)
    elif result.error:
        print(f"logrelay: poll failed: {result.error}", file=sys.stderr)
    return 0 if result.ok else 1


def _days(lag: timedelta) -> str:
    return f"{lag.total_seconds() / 86400:.1f}"
