"""The database goes away and comes back: its connections are killed (pg_terminate_backend, as a
failover, a pgbouncer restart or an idle-connection killer does), or it cannot be reached for a while.
Requests whose work was not committed get a 503 with a JSON error (Auth0 sends them again), never a
2xx and never a 500; the next requests once the database answers get 2xx; the background loops log,
carry on, and deliver and poll again after, losing no outbox row.

The PostgreSQL tests kill only the test database's own connections; the cluster is never stopped.
A database that cannot be reached is a TCP relay in front of it (tests.database_proxy) that stops
relaying, or goes silent, as a load balancer or pgbouncer in front of PostgreSQL would."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import housekeeping, stopping
from app.auth0 import management
from app.config import Settings
from app.delivery import run_delivery_loop
from app.models import LogEvent, OutboxItem
from app.wal import run_checkpoints
from tests.conftest import (
    ADMIN_TOKEN,
    PG_URL,
    READ_TOKEN,
    LiveServer,
    auth,
    bearer,
    database_gone,
    is_postgres,
)
from tests.database_proxy import DatabaseProxy, database_address, through
from tests.factories import make_event, make_stream_body
from tests.poller.fake_auth0 import CLIENT_ID, CLIENT_SECRET, FakeAuth0, make_logs, serve
from tests.receiver.support import stored_ids
from tests.relay.receiver import Receiver

pg_only = pytest.mark.skipif(not is_postgres(), reason="kills PostgreSQL connections")

DEADLINE = 30.0  # seconds: a bound on waiting for a condition, never a timing assertion
UNREACHABLE = (
    "postgresql+asyncpg://postgres@127.0.0.1:1/nothing"
    if is_postgres()
    else "sqlite+aiosqlite:////nonexistent-dir/x/y.db"
)

# Every route that reads the database, with the token it takes.
READS = [
    ("/api/events", READ_TOKEN),
    ("/api/events/export", READ_TOKEN),
    ("/api/events/900-no-such-event", READ_TOKEN),
    ("/api/stats", READ_TOKEN),
    ("/api/destinations", ADMIN_TOKEN),
    ("/api/deliveries", ADMIN_TOKEN),
    ("/api/poller", READ_TOKEN),
]


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Until `condition()` holds, for at most DEADLINE seconds."""
    for _ in range(int(DEADLINE / 0.02)):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def plain_url(url: str) -> str:
    """A database URL as asyncpg takes it (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def post(client: httpx.AsyncClient, events: list[dict[str, Any]]) -> httpx.Response:
    return await client.post("/api/logs", content=make_stream_body(events), headers=auth())


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, f"{response.request.url}: {response.status_code} {response.text}"
    assert set(response.json()) == {"error", "detail"}
    assert response.json()["error"] == "unavailable"


async def read_all(client: httpx.AsyncClient) -> list[httpx.Response]:
    return [await client.get(path, headers=bearer(token)) for path, token in READS]


def assert_answered(responses: list[httpx.Response]) -> None:
    """Each read answered as with a database that works (the one event asked for does not exist)."""
    codes = [(str(r.request.url.path), r.status_code) for r in responses]
    assert codes == [(path, 404 if "no-such" in path else 200) for path, _ in READS], [
        r.text for r in responses
    ]


# --- killing the connections --------------------------------------------------------------------


async def terminate_backends(control: asyncpg.Connection) -> None:
    """Kill every connection to the test database but `control`'s, and return once the processes
    behind them have exited and this process has seen each of its connections closed."""
    killed = [
        row["pid"]
        for row in await control.fetch(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    ]

    async def gone() -> bool:
        await control.execute("SELECT pg_stat_clear_snapshot()")  # within a transaction too
        left = await control.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", killed)
        # The backend leaves pg_stat_activity a moment before its process exits and closes its socket.
        return left == 0 and not any(_running(pid) for pid in killed)

    await eventually(gone, "the killed backends to exit")
    await eventually(closes_seen(database_port()), "this process to see its database connections closed")


def database_port() -> int:
    assert PG_URL is not None
    address = database_address(PG_URL)
    return 0 if isinstance(address, str) else address[1]  # 0: over a Unix socket, no port


def _running(pid: int) -> bool:
    """Whether the (local) process is still running; a zombie has closed its sockets already."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def closes_seen(port: int) -> Callable[[], Awaitable[bool]]:
    """Whether the event loop has handled every close the database (or the relay) on `port` made."""

    async def seen() -> bool:
        return not _half_closed(port)

    return seen


def _half_closed(port: int) -> bool:
    """Whether a TCP connection of this process to `port` is closed by its peer yet still open here
    (CLOSE_WAIT). Only that port: a web server's keep-alive connection the test's clients have not
    used since the server closed it stays CLOSE_WAIT, rightly."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                ours.add(link[len("socket:[") : -1])
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == "08" and remote_port == port and fields[9] in ours:  # 08: CLOSE_WAIT
                    return True
    return False


@contextlib.asynccontextmanager
async def control_connection() -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the test database, outside every pool."""
    assert PG_URL is not None
    conn = await asyncpg.connect(plain_url(PG_URL))
    try:
        yield conn
    finally:
        await conn.close()


# --- tests --------------------------------------------------------------------------------------


@pg_only
async def test_connections_killed_between_requests_cost_no_request(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Connections the server closed while they sat in the pool are replaced before use: the first
    requests after pg_terminate_backend are answered as if nothing had happened."""
    before = [make_event()]
    assert (await post(client, before)).status_code == 200
    # Several connections in the pool, each of which the kill will close.
    for responses in await asyncio.gather(*[read_all(client) for _ in range(3)]):
        assert_answered(responses)

    async with control_connection() as control:
        await terminate_backends(control)

    after = [make_event()]
    stored = await post(client, after)
    assert stored.status_code == 200, stored.text
    assert stored.json()["stored"] == 1
    assert_answered(await read_all(client))
    listed = await client.get("/api/events", headers=bearer(READ_TOKEN))
    assert {e["log_id"] for e in listed.json()["events"]} == {before[0]["log_id"], after[0]["log_id"]}
    assert (await client.get("/readyz")).status_code == 200


@pg_only
async def test_a_commit_whose_connection_is_killed_is_a_503_and_the_next_one_is_stored(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The connection dies while the commit is under way (it waits on a lock the test holds): that
    request gets a 503 and none of its events is kept; the next request is stored."""
    cut = [make_event(), make_event()]
    async with control_connection() as control:
        await control.execute("BEGIN; LOCK TABLE log_events IN SHARE ROW EXCLUSIVE MODE")
        posting = asyncio.create_task(post(client, cut))

        async def waiting() -> bool:
            # Within a transaction the list of backends is read once: the ingest's may be newer.
            await control.execute("SELECT pg_stat_clear_snapshot()")
            return bool(
                await control.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            )

        await eventually(waiting, "the ingest transaction to wait on the lock")
        await terminate_backends(control)
        assert_unavailable(await posting)
        await control.execute("ROLLBACK")

    assert await stored_ids(engine) == set()
    retried = await post(client, cut)  # Auth0's retry, at once
    assert retried.status_code == 200, retried.text
    assert retried.json()["stored"] == 2
    assert await stored_ids(engine) == {e["log_id"] for e in cut}


@pytest.mark.parametrize("where", ["nothing listens", "no such database"])
async def test_every_read_is_a_503_while_the_database_cannot_be_reached(
    client: httpx.AsyncClient, live: LiveServer, where: str
) -> None:
    """Not a 500: the client is told to retry, with the JSON error every route uses."""
    url = None
    if where == "no such database":
        if not is_postgres():
            pytest.skip("SQLite creates a missing database file")
        assert PG_URL is not None
        url = make_url(PG_URL).set(drivername="postgresql+asyncpg", database="logrelay_no_such_database")
    async with database_gone(live, url and url.render_as_string(hide_password=False)):
        for response in await read_all(client):
            assert_unavailable(response)
        assert_unavailable(await client.get("/readyz"))
        assert (await client.get("/healthz")).status_code == 200
    assert_answered(await read_all(client))


@dataclass
class Serving:
    """`serve` with its loops (delivery, housekeeping, poller) through the relay, once the events
    `before` are delivered and purged and the first poll is stored: what the outage tests start from."""

    client: httpx.AsyncClient
    fake: FakeAuth0
    before: list[dict[str, Any]]
    engine: AsyncEngine
    caplog: pytest.LogCaptureFixture

    async def outbox_empty(self) -> bool:  # delivered, and purged by housekeeping
        async with self.engine.connect() as conn:
            return not await conn.scalar(select(func.count()).select_from(OutboxItem))

    async def polled(self, items: list[dict[str, Any]]) -> bool:
        async with self.engine.connect() as conn:
            ids = [item["_id"] for item in items]
            found = await conn.scalar(select(func.count()).where(LogEvent.log_id.in_(ids)))
        return found == len(ids)

    async def loops_failed(self) -> None:
        """Each loop has logged its failure: it fails and goes on rather than hang or stop."""
        for message in ("could not list destinations", "housekeeping failed", "poll pass crashed"):

            async def seen(message: str = message) -> bool:
                return any(record.getMessage().startswith(message) for record in self.caplog.records)

            await eventually(seen, f"the log line {message!r}")

    async def caught_up(self, late: list[dict[str, Any]]) -> None:
        await eventually(lambda: self.polled(late), "a poll after the outage")
        await eventually(self.outbox_empty, "the later events to be delivered and purged")


@contextlib.asynccontextmanager
async def serving_with_workers(
    database_url: str,
    receiver: Receiver,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    **settings: Any,
) -> AsyncIterator[Serving]:
    caplog.set_level(logging.INFO, logger="app")
    monkeypatch.setattr(housekeeping, "PURGE_EVERY", 0.05)  # housekeeping runs often enough to see
    monkeypatch.setattr(stopping, "MAX_FAILURE_PAUSE", 1.0)  # and delivery backs off that far at most
    management.TOKENS.clear()
    fake = FakeAuth0()
    early = make_logs(3)
    fake.add(early)
    async with serve(fake.app()) as auth0_url, httpx.AsyncClient(timeout=DEADLINE) as client:
        live = await start_server(
            make_settings(
                database_url=database_url,
                run_workers=True,
                forward_url=receiver.url,
                delivery_poll_interval=0.02,
                delivery_backoff_base=0.01,
                delivery_backoff_max=0.05,
                delivery_keep_delivered=timedelta(0),
                auth0_domain=auth0_url,
                auth0_client_id=CLIENT_ID,
                auth0_client_secret=CLIENT_SECRET,
                poll_schedule="1s",
                **settings,
            )
        )
        client.base_url = httpx.URL(live.base_url)
        serving = Serving(client, fake, [make_event(type="f") for _ in range(3)], engine, caplog)
        assert (await post(client, serving.before)).status_code == 200
        await receiver.wait_for(1, within=DEADLINE)
        await eventually(serving.outbox_empty, "the first events to be delivered and purged")
        await eventually(lambda: serving.polled(early), "the first poll")
        caplog.clear()
        yield serving


@pg_only
async def test_a_database_outage_while_serving_with_workers(
    proxy: DatabaseProxy,
    receiver: Receiver,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`serve` with its loops: the database's connections are killed and it cannot be reached for a
    while, then it is back. Ingest and the query API answer 503 meanwhile and 2xx after; /readyz
    follows; the delivery, housekeeping and poller loops fail, log, and work again after; every
    committed failure event is delivered once and none that was refused."""
    async with serving_with_workers(
        through(proxy), receiver, make_settings, start_server, engine, caplog, monkeypatch
    ) as serving:
        client, before = serving.client, serving.before
        # The outage: every connection is killed, and no new one can be made.
        await proxy.down()
        async with control_connection() as control:
            await terminate_backends(control)
        refused = [make_event(type="f") for _ in range(2)]
        assert_unavailable(await post(client, refused))
        for response in await read_all(client):
            assert_unavailable(response)
        assert_unavailable(await client.get("/readyz"))
        assert (await client.get("/healthz")).status_code == 200
        late = make_logs(2, first=10)
        serving.fake.add(late)
        await serving.loops_failed()

        # The database is back.
        await proxy.up()
        await eventually(closes_seen(proxy.port), "the relay's cut connections to be closed here")
        after = [make_event(type="f") for _ in range(3)]
        stored = await post(client, after)
        assert stored.status_code == 200, stored.text
        assert stored.json()["stored"] == 3
        assert_answered(await read_all(client))
        assert (await client.get("/readyz")).status_code == 200

        await serving.caught_up(late)

    delivered = [event["log_id"] for event in receiver.events()]
    assert sorted(delivered) == sorted(e["log_id"] for e in before + after)  # each once, none refused
    assert await stored_ids(engine) >= {e["log_id"] for e in before + after}
    assert not await stored_ids(engine) & {e["log_id"] for e in refused}


@pg_only
async def test_a_round_whose_outcome_cannot_be_recorded_is_sent_again_and_none_is_lost(
    proxy: DatabaseProxy,
    receiver: Receiver,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database goes away while a round is at the destination: the worker cannot record the
    answer, so the rows stay leased, and once the lease ends they are sent again (at least once:
    receivers deduplicate by webhook-id) and recorded delivered. No row is lost or left leased."""
    caplog.set_level(logging.INFO, logger="app")
    receiver.hold = asyncio.Event()
    settings = make_settings(
        database_url=through(proxy),
        run_workers=True,
        forward_url=receiver.url,
        delivery_poll_interval=0.02,
        delivery_backoff_base=0.01,
        delivery_backoff_max=0.05,
        delivery_timeout=0.5,
        delivery_lease=timedelta(seconds=2.5),  # more than 4 x the timeout, as it must be
    )
    live = await start_server(settings)
    events = [make_event(type="f") for _ in range(3)]
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
        assert (await post(client, events)).status_code == 200
    await receiver.wait_for(1, within=DEADLINE)  # the round is at the destination, held there

    await proxy.down()
    async with control_connection() as control:
        await terminate_backends(control)
    receiver.hold.set()  # answered (or timed out): either way the outcome cannot be written

    async def failed_round() -> bool:
        return any(r.getMessage() == "delivery round failed" for r in caplog.records)

    await eventually(failed_round, "the round to fail on recording its outcome")
    await proxy.up()

    async def all_delivered() -> bool:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(OutboxItem.status, OutboxItem.lease_until))).all()
        return len(rows) == 3 and all(row == ("delivered", None) for row in rows)

    await eventually(all_delivered, "the leased rows to be sent again and recorded")
    sent = [event["log_id"] for event in receiver.events()]
    assert set(sent) == {e["log_id"] for e in events}
    # Twice at least: the held send, whose answer could not be recorded, and the one recorded. A third
    # is at-least-once too: on a slow machine the held send may time out, and be recorded as failed,
    # before the database goes.
    assert all(sent.count(e["log_id"]) >= 2 for e in events), sent


@pg_only
async def test_ingest_answers_503_within_the_commit_timeout_while_the_database_host_is_silent(
    proxy: DatabaseProxy,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database's host goes silent: nothing it is sent arrives, and nothing says so. Each request
    is answered 503 once its group commit has run out of COMMIT_TIMEOUT, both those whose writer had a
    connection already and those that needed a new one; the stuck connections are thrown away, and
    once the host answers again the next requests are stored, Auth0's retries of the refused ones
    too, each event once."""
    caplog.set_level(logging.INFO, logger="app")
    live = await start_server(make_settings(database_url=through(proxy), commit_timeout=1.0))
    # A generous bound on each answer, 10 x COMMIT_TIMEOUT: a group may wait behind a stuck one (about
    # twice the timeout), and the machine may be loaded. Before the timeout, these requests never ended.
    async with httpx.AsyncClient(base_url=live.base_url, timeout=10.0) as client:
        before = [[make_event()] for _ in range(4)]  # the writers open their connections
        assert [r.status_code for r in await asyncio.gather(*(post(client, b) for b in before))] == [200] * 4

        proxy.blackhole()
        refused = [[make_event(), make_event()] for _ in range(8)]
        try:
            for response in await asyncio.gather(*(post(client, batch) for batch in refused)):
                assert_unavailable(response)
            refused.append([make_event()])
            assert_unavailable(await post(client, refused[-1]))  # after the first timeouts, too
            assert (await client.get("/healthz")).status_code == 200
        finally:
            proxy.resume()  # should the above fail, no request is left hanging at the server's stop

        after = [make_event() for _ in range(3)]
        stored = await post(client, after)
        assert stored.status_code == 200, stored.text
        assert stored.json()["stored"] == 3
        for batch in refused:  # Auth0 sends them again
            retried = await post(client, batch)
            assert retried.status_code == 200, retried.text
            assert retried.json()["received"] == len(batch)

    sent = {e["log_id"] for batch in [*before, *refused, after] for e in batch}
    assert await stored_ids(engine) == sent  # log_id is the key: each is stored once
    assert any(r.getMessage() == "store failed: CommitTimeout" for r in caplog.records)


# --- backing off while the database is gone --------------------------------------------------------


class Pauses:
    """A loop's `wait` that records the seconds each task asked for and returns at once (nothing
    sleeps); `first` runs on the first pause; the stop is set once `enough(self)` holds."""

    def __init__(self, first: Callable[[], None], enough: Callable[[Pauses], bool]) -> None:
        self.by_task: dict[str, list[float]] = {}
        self._first: Callable[[], None] | None = first
        self._enough = enough

    async def __call__(self, stop: asyncio.Event, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.by_task.setdefault(task.get_name(), []).append(seconds)
        if self._first is not None:
            self._first, first = None, self._first
            first()
        if self._enough(self):
            stop.set()


async def test_the_delivery_loops_back_off_while_the_database_is_gone(
    make_settings: Callable[..., Settings], start_server: Callable[..., Any], receiver: Receiver
) -> None:
    """Each failure in a row doubles the pause, up to a cap: an outage is not tried, and logged with
    a traceback, every DELIVERY_POLL_INTERVAL by the listing and by each destination's loop."""
    live = await start_server(make_settings(delivery_poll_interval=0.5))
    async with httpx.AsyncClient(base_url=live.base_url, headers=bearer(ADMIN_TOKEN)) as api:
        created = await api.post("/api/destinations", json={"name": "hook", "url": receiver.url})
        assert created.status_code == 201, created.text
    context = live.context

    def the_database_goes() -> None:  # after the first listing, before the destination's first round
        context.engine = create_async_engine(UNREACHABLE)

    def enough(pauses: Pauses) -> bool:
        return len(pauses.by_task) == 2 and all(len(s) >= 9 for s in pauses.by_task.values())

    pauses = Pauses(the_database_goes, enough)
    good = context.engine
    try:
        async with asyncio.timeout(DEADLINE):
            await run_delivery_loop(context, asyncio.Event(), wait=pauses)
    finally:
        await context.engine.dispose()
        context.engine = good
    this_task = asyncio.current_task()
    assert this_task is not None
    listing = pauses.by_task.pop(this_task.get_name())
    [destination] = pauses.by_task.values()
    assert listing[:9] == [0.5, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # listed once, then failures
    assert destination[:9] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


@pytest.mark.skipif(is_postgres(), reason="SQLite's WAL checkpoints")
async def test_wal_checkpoints_back_off_while_they_fail() -> None:
    def enough(pauses: Pauses) -> bool:
        return sum(len(s) for s in pauses.by_task.values()) >= 12

    pauses = Pauses(lambda: None, enough)
    engine = create_async_engine(UNREACHABLE)
    try:
        async with asyncio.timeout(DEADLINE):
            await run_checkpoints(engine, asyncio.Event(), wait=pauses)
    finally:
        await engine.dispose()
    [seconds] = pauses.by_task.values()
    assert seconds == [0.1, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
