"""Group commit under failure: a batch the database refuses fails only its own request (a 5xx, so
Auth0 retries it), never the requests that shared its transaction; and a stop drops nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool

from app.auth0.stream.event import to_event
from app.auth0.stream.parsed import Rejected
from app.committer import AsyncCommitter, SQLiteCommitter, _outcomes
from app.config import Settings
from app.db import make_sqlite_writer_engine
from app.ingest import Batch, StoreResult, to_rows
from tests.conftest import auth, is_postgres
from tests.database_stall import write_lock
from tests.factories import make_event, make_stream_body
from tests.receiver.support import refusing, stored_ids

POISON = "poison-log-id"


@pytest.fixture
async def poisoned(engine: AsyncEngine) -> AsyncIterator[None]:
    """A real database trigger that refuses one log id, for as long as the test runs."""
    async with refusing(engine, POISON):
        yield


@pytest.mark.usefixtures("poisoned")
async def test_a_refused_batch_fails_alone(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    good_batches = [[make_event() for _ in range(5)] for _ in range(30)]
    poison_batch = [make_event(), make_event(log_id=POISON)]

    async def post(events: list[dict[str, object]]) -> httpx.Response:
        return await client.post("/api/logs", content=make_stream_body(events), headers=auth())

    responses = await asyncio.gather(
        *(post(b) for b in good_batches[:15]), post(poison_batch), *(post(b) for b in good_batches[15:])
    )
    poison_response = responses[15]
    good_responses = responses[:15] + responses[16:]
    assert all(r.status_code == 200 for r in good_responses), [r.text for r in good_responses]
    assert all(r.json()["stored"] == 5 for r in good_responses)
    # The database refused it: a 5xx, so that Auth0 sends it again; none of its events is kept.
    assert poison_response.status_code >= 500
    assert set(poison_response.json()) == {"error", "detail"}
    assert await stored_ids(engine) == {e["log_id"] for b in good_batches for e in b}

    # The receiver goes on working, and the refused batch's good event arrives on the retry.
    response = await post([poison_batch[0]])
    assert response.json()["stored"] == 1


class RecordingSQLiteCommitter(SQLiteCommitter):
    """The real committer, noting the rows (events and quarantined lines) of each transaction."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transactions: list[int] = []

    def _transaction(self, batches: list[Batch]) -> list[StoreResult]:
        self.transactions.append(sum(len(b.rows) + len(b.rejected) for b in batches))
        return super()._transaction(batches)


class RecordingAsyncCommitter(AsyncCommitter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transactions: list[int] = []

    async def _transaction(self, batches: list[Batch]) -> list[StoreResult]:
        self.transactions.append(sum(len(b.rows) + len(b.rejected) for b in batches))
        return await super()._transaction(batches)


def started_committer(
    settings: Settings, engine: AsyncEngine, max_rows: int = 20
) -> RecordingSQLiteCommitter | RecordingAsyncCommitter:
    """The database's own committer, started: SQLite's writer thread, or two PostgreSQL writers."""
    committer: RecordingSQLiteCommitter | RecordingAsyncCommitter
    if settings.is_sqlite:
        committer = RecordingSQLiteCommitter(make_sqlite_writer_engine(settings), max_rows=max_rows)
    else:
        committer = RecordingAsyncCommitter(engine, max_rows=max_rows, writers=2, timeout=30)
    committer.start()
    return committer


async def test_stop_commits_and_answers_every_queued_batch(settings: Settings, engine: AsyncEngine) -> None:
    """Stopping while a commit is under way and more batches wait: every one is stored and answered."""
    committer = started_committer(settings, engine)
    now = datetime.now(UTC)
    batches = [to_rows([to_event(make_event()) for _ in range(10)], "stream", now)[0] for _ in range(12)]
    async with write_lock(engine, settings):  # the writers' first commits wait on it, the rest queue
        stores = [asyncio.create_task(committer.store(Batch(rows, [], "stream", now))) for rows in batches]
        stopping = asyncio.create_task(committer.stop())  # asked after every batch is queued
        await asyncio.sleep(0)  # one turn of the loop: the tasks above queue their batches, in order
        assert not any(store.done() for store in stores)
        assert not stopping.done()
    await asyncio.wait_for(stopping, 30)

    results = await asyncio.wait_for(asyncio.gather(*stores), 10)
    assert [r.stored for r in results] == [10] * 12
    assert await stored_ids(engine) == {row["log_id"] for rows in batches for row in rows}


async def test_a_transaction_takes_at_most_commit_max_rows(settings: Settings, engine: AsyncEngine) -> None:
    """Batches queued behind a commit are grouped in order while they fit in max_rows: one that would
    take a group past it begins the next group, and one larger on its own is a group of its own."""
    committer = started_committer(settings, engine)
    now = datetime.now(UTC)

    def batch(events: int, rejected: int = 0) -> Batch:
        rows = to_rows([to_event(make_event()) for _ in range(events)], "stream", now)[0]
        return Batch(rows, [Rejected(n, "invalid JSON", b"{") for n in range(rejected)], "stream", now)

    # The last batch's quarantined lines are rows of its transaction too: 8 events and 4 lines are 12.
    queued = [batch(n) for n in (15, 15, 5, 10, 10, 25, 3, 19, 1, 12)] + [batch(8, rejected=4)]
    async with write_lock(engine, settings):  # the first commit waits on it; the rest queue behind
        stores = [asyncio.create_task(committer.store(b)) for b in queued]
        await asyncio.sleep(0)  # one turn of the loop: the tasks above queue their batches, in order
        assert not any(store.done() for store in stores)
    results = await asyncio.wait_for(asyncio.gather(*stores), 30)
    await committer.stop()

    assert [r.received for r in results] == [15, 15, 5, 10, 10, 25, 3, 19, 1, 12, 12]
    # 15 | 15+5 | 10+10 | 25 alone | 3 (+19 would be 22) | 19+1 | 12 (+12 would be 24) | 8+4
    assert committer.transactions == [15, 20, 20, 25, 3, 20, 12, 12]
    assert await stored_ids(engine) == {row["log_id"] for b in queued for row in b.rows}


def test_an_unavailable_database_fails_the_group_at_once() -> None:
    """A locked or unreachable database is not one batch's fault: the group is not retried batch by
    batch, which would make each request wait out the lock timeout once per batch before its 503."""
    calls: list[int] = []
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))

    def transaction(batches: list[Batch]) -> list[StoreResult]:
        calls.append(len(batches))
        raise locked

    now = datetime.now(UTC)
    batches = [Batch([], [], "stream", now) for _ in range(5)]
    assert _outcomes(transaction, batches) == [locked] * 5
    assert calls == [5]


def test_a_refused_group_is_retried_batch_by_batch() -> None:
    calls: list[int] = []
    now = datetime.now(UTC)
    poison = Batch([{"log_id": POISON}], [], "stream", now)
    refused = IntegrityError("INSERT", {}, sqlite3.IntegrityError("poisoned"))

    def transaction(batches: list[Batch]) -> list[StoreResult]:
        calls.append(len(batches))
        if poison in batches:
            raise refused
        return [StoreResult(0, 0, 0) for _ in batches]

    batches = [Batch([], [], "stream", now), poison, Batch([], [], "stream", now)]
    outcomes = _outcomes(transaction, batches)
    assert outcomes[1] is refused
    assert [type(o) for o in outcomes] == [StoreResult, IntegrityError, StoreResult]
    assert calls == [3, 1, 1, 1]


# --- the writer when the disk or the lock fails it (SQLite) -----------------------------------------

sqlite_only = pytest.mark.skipif(is_postgres(), reason="the SQLite writer thread")


@pytest.fixture
def small_disk(tmp_path: Path, sqlite_template: Path | None) -> Iterator[Path]:
    """A copy of the migrated database on a real 4 MiB filesystem (tmpfs, which needs root to
    mount), unmounted once the servers using it have stopped."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        assert sqlite_template is not None
        yield Path(shutil.copy(sqlite_template, where / "logrelay.db"))
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)


def fill(directory: Path) -> Path:
    """A file that takes every free byte of the directory's filesystem."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as sink, contextlib.suppress(OSError):  # ENOSPC: it is full
        while True:
            sink.write(b"\0" * 65536)
    assert os.statvfs(directory).f_bavail == 0
    return filler


async def post(client: httpx.AsyncClient, events: list[dict[str, object]]) -> httpx.Response:
    return await client.post("/api/logs", content=make_stream_body(events), headers=auth())


def assert_retryable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "unavailable"
    assert set(response.json()) == {"error", "detail"}


async def resend(client: httpx.AsyncClient, refused: list[list[dict[str, object]]]) -> None:
    """Auth0's retries of the refused bodies: each is stored whole."""
    for events in refused:
        retried = await post(client, events)
        assert retried.status_code == 200, retried.text
        assert retried.json()["stored"] == len(events)


@sqlite_only
async def test_a_full_disk_is_a_503_and_the_writer_goes_on(
    small_disk: Path, make_settings: Callable[..., Settings], start_server: Callable[..., Any]
) -> None:
    """The disk fills up under the database: what could not be committed is a 503 (Auth0 sends it
    again), and once there is room the same writer stores the retry."""
    live = await start_server(make_settings(database_url=f"sqlite:///{small_disk}"))
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
        first = [make_event()]
        assert (await post(client, first)).status_code == 200
        filler = fill(small_disk.parent)
        # Each body more than the whole WAL file holds, so that its commit must grow the file (a
        # commit may reuse the WAL's room from its start once a checkpoint has copied it back).
        pages = small_disk.with_name("logrelay.db-wal").stat().st_size // 4096 + 16
        refused = [[make_event(description="x" * 4096) for _ in range(pages)] for _ in range(2)]
        for response in await asyncio.gather(*(post(client, events) for events in refused)):
            assert_retryable(response)
        assert await stored_ids(live.context.engine) == {first[0]["log_id"]}

        filler.unlink()
        await resend(client, refused)
        every = first + refused[0] + refused[1]
        assert await stored_ids(live.context.engine) == {e["log_id"] for e in every}


@contextlib.contextmanager
def busy_timeout(milliseconds: int) -> Iterator[None]:
    """The SQLite writer waits at most this long for a lock another connection holds (30 s in
    service): set on each checkout of a synchronous SQLite connection, for the block."""

    def shorten(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute(f"PRAGMA busy_timeout={milliseconds}")

    event.listen(Pool, "checkout", shorten)
    try:
        yield
    finally:
        event.remove(Pool, "checkout", shorten)


@sqlite_only
async def test_a_lock_held_past_the_busy_timeout_is_a_503_and_the_writer_goes_on(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    """Another process keeps the write lock longer than the writer waits for it: the requests of the
    group that gave up are 503s, and the writer stores their retries once the lock is free."""
    refused = [[make_event()] for _ in range(4)]
    with busy_timeout(50):
        async with write_lock(engine, settings):
            for response in await asyncio.gather(*(post(client, events) for events in refused)):
                assert_retryable(response)
        assert await stored_ids(engine) == set()
        await resend(client, refused)
    assert await stored_ids(engine) == {events[0]["log_id"] for events in refused}


@pytest.mark.skipif(not is_postgres(), reason="PostgreSQL's lock_timeout")
async def test_a_lock_held_past_the_lock_timeout_is_a_503_and_the_writers_go_on(
    make_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same on PostgreSQL: ingest's sessions wait for a lock at most half COMMIT_TIMEOUT, and then
    PostgreSQL itself ends the wait (lock_timeout), before the commit timeout would close their
    connections. The requests are 503s, and the retries are stored once the lock is free."""
    caplog.set_level(logging.ERROR, logger="app.committer")
    settings = make_settings(commit_timeout=4.0)  # lock_timeout 2 s: 2 s to spare on a loaded machine
    live = await start_server(settings)
    refused = [[make_event()] for _ in range(4)]
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
        async with write_lock(engine, settings):
            for response in await asyncio.gather(*(post(client, events) for events in refused)):
                assert_retryable(response)
        failures = [record.exc_info[1] for record in caplog.records if record.exc_info]
        assert failures
        assert all(getattr(getattr(exc, "orig", None), "sqlstate", None) == "55P03" for exc in failures)
        assert await stored_ids(engine) == set()
        await resend(client, refused)
    assert await stored_ids(engine) == {events[0]["log_id"] for events in refused}


async def test_many_tiny_events_beyond_commit_max_rows(
    make_settings: Callable[..., Settings], start_server: Callable[..., Any], engine: AsyncEngine
) -> None:
    """Bodies of more events than COMMIT_MAX_ROWS (and than one SQLite statement takes, 1,000 rows),
    sent at once and overlapping: each is one batch, every event is stored once, and each answer
    adds up."""
    live = await start_server(make_settings(commit_max_rows=100))
    ids = [f"tiny-{n}" for n in range(2501)]
    bodies = [
        b"\n".join([b'{"log_id": "%s"}' % i.encode() for i in ids[start : start + 1001]] + [b"[]", b"{"])
        for start in range(0, 2000, 500)
    ]
    async with httpx.AsyncClient(base_url=live.base_url, timeout=60) as client:
        responses = await asyncio.gather(
            *(client.post("/api/logs", content=body, headers=auth()) for body in bodies)
        )
    answers = [r.json() for r in responses]
    assert all(r.status_code == 200 for r in responses), answers
    for answer in answers:
        assert (answer["received"], answer["rejected"]) == (1003, 2)
        assert answer["stored"] + answer["duplicates"] == 1001
    sent = {i for start in range(0, 2000, 500) for i in ids[start : start + 1001]}
    assert sum(a["stored"] for a in answers) == len(sent)
    assert await stored_ids(engine) == sent
