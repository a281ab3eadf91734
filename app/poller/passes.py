"""One poll pass (Pass): the cursor, reading page after page from the checkpoint (through a
Fetcher), and storing each page with the checkpoint that ends it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app import metrics
from app.auth0 import management
from app.auth0.management import ManagementError
from app.auth0.stream.event import StreamEvent, to_event
from app.context import Context
from app.ingest import Batch, parse_date, store_batches, to_rows
from app.poller.client import management_client
from app.poller.fetching import Fetcher
from app.poller.lag import check_lag
from app.poller.lease import Lease
from app.poller.result import PassResult, Stopped
from app.poller.runs import close_abandoned_runs, record_pass, start_run
from app.poller.state import checkpoint_date, load_state, save_checkpoint
from app.stopping import Wait

log = logging.getLogger(__name__)

# A log's id carries the time Auth0 stored it, never before its date; this allows for the two clocks.
START_MARGIN = timedelta(minutes=1)


@dataclass(slots=True)
class _Cursor:
    checkpoint: str | None
    start_from: str | None
    dirty: bool = False  # START_FROM moved it: save even if no page follows
    oldest_id: str | None = None  # the smallest id of the oldest logs by date, when read this pass


class Pass:
    """One pass: the cursor, which page to read next, storing each, and the result it fills in; its
    Fetcher keeps the time budget and the pauses."""

    def __init__(self, context: Context, lease: Lease, stop: asyncio.Event, wait: Wait) -> None:
        self.context, self.settings, self.lease = context, context.settings, lease
        self.stop, self.wait = stop, wait
        self.result = PassResult(ran=True)
        self.cursor = _Cursor(None, None)
        self.warned_lost = False  # "logs may have been lost" is said once a pass

    async def run(self) -> PassResult:
        settings, result = self.settings, self.result
        async with self.context.engine.begin() as conn:
            await _close_abandoned_runs(conn, datetime.now(UTC))
            state = await load_state(conn)
            result.run_id = await start_run(conn, result.started_at, state.checkpoint)
            self.cursor = _Cursor(state.checkpoint, state.start_from)
            if settings.start_from and settings.start_from != state.start_from:
                # Applied once, like the extensions: only when START_FROM differs from the one stored.
                checkpoint = management.start_checkpoint(settings.start_from)
                self.cursor = _Cursor(checkpoint, settings.start_from, dirty=True)
                log.info(
                    "START_FROM applied", extra={"start_from": settings.start_from, "checkpoint": checkpoint}
                )
            written_at = await checkpoint_date(conn, self.cursor.checkpoint)
        result.start_checkpoint = result.checkpoint = self.cursor.checkpoint
        self._check_retention(written_at)
        try:
            fetcher = Fetcher(management_client(self.context), settings, self.stop, self.wait, result)
            await self._read_pages(fetcher)
        except Stopped as stopped:
            if str(stopped):
                result.warnings.append(str(stopped))
        except ManagementError as exc:
            result.error = str(exc)
        except Exception as exc:  # the store or the database: the pass fails, the process goes on
            log.exception("poll pass failed")
            result.error = f"{type(exc).__name__}: {exc}"
        result.checkpoint = self.cursor.checkpoint
        check_lag(settings, result)
        result.ended_at = datetime.now(UTC)
        await record_pass(self.context, result)
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

    async def _read_pages(self, fetcher: Fetcher) -> None:
        cursor = self.cursor
        fell_back = False
        while True:
            fetcher.check_budget()
            if cursor.checkpoint is None:
                if not await self._find_start(fetcher):
                    self.result.caught_up = True  # Auth0 keeps no logs
                    return
                continue
            try:
                page = await fetcher.fetch(cursor.checkpoint)
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
            await fetcher.respect_rate_limit(page)

    async def _find_start(self, fetcher: Fetcher) -> bool:
        """With no checkpoint: store the oldest logs by date, and go on by id from their earliest date
        (less START_MARGIN), as START_FROM's date form does. Their own smallest id would skip a log
        stored before them but dated after them, which has a smaller id than all of them; no log is
        stored before its date, so none has an id before that start. False when Auth0 keeps no logs.

        Read again by id, these logs count then; the one at the smallest id counts now if Auth0
        refuses that start and reading goes on from it instead (it is not read again)."""
        page = await fetcher.fetch(self.cursor.checkpoint)
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
        await fetcher.respect_rate_limit(page)
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
            await save_checkpoint(conn, self.lease, checkpoint, cursor.start_from)
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
    if closed := await close_abandoned_runs(conn, now):
        log.error("closed poll runs whose process stopped before they finished", extra={"runs": closed})
