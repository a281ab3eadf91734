"""A database host that goes silent: packets to it are dropped and nothing says so (no RST, no FIN),
as after a failover, a cloud NAT's idle timeout or a pulled cable. Every connection logrelay opens to
PostgreSQL has TCP keepalive and TCP_USER_TIMEOUT, so that such a connection fails in bounded time,
idle or with data in flight, and the background loops log and carry on instead of hanging.

A relay's kernel acknowledges what it receives, so dropping packets needs the network itself: the
serving test runs in a private network namespace (root, `unshare`, `ip`), where a policy routing
rule drops the packets of the relay's port, and the relay reaches PostgreSQL over its Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app import db
from app.config import Settings
from tests.conftest import PG_URL, is_postgres
from tests.database_proxy import DatabaseProxy, through
from tests.factories import make_event
from tests.poller.fake_auth0 import make_logs
from tests.receiver.support import stored_ids
from tests.relay.receiver import Receiver
from tests.test_outage import (
    DEADLINE,
    assert_answered,
    assert_unavailable,
    closes_seen,
    control_connection,
    eventually,
    plain_url,
    post,
    read_all,
    serving_with_workers,
    terminate_backends,
)

pg_only = pytest.mark.skipif(not is_postgres(), reason="PostgreSQL's connections")
IN_NAMESPACE = os.environ.get("LOGRELAY_TEST_NETNS") == "1"


def sockets_to(port: int) -> list[socket.socket]:
    """This process's TCP connections to 127.0.0.1:`port`, as sockets of their own (duplicates)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:["):
                sock = socket.socket(fileno=os.dup(int(fd)))
                if _peer(sock) == ("127.0.0.1", port):
                    found.append(sock)
                else:
                    sock.close()
    return found


def _peer(sock: socket.socket) -> Any:
    try:
        return sock.getpeername() if sock.family == socket.AF_INET else None
    except OSError:  # not connected: a listening socket
        return None


@pg_only
async def test_every_database_connection_has_tcp_keepalive_and_a_user_timeout(
    proxy: DatabaseProxy, make_settings: Callable[..., Settings], start_server: Callable[..., Any]
) -> None:
    """Both pools' connections (the committer's and the shared one), through a relay so that only
    logrelay's own are looked at; and the server is told the same, for its side of each connection."""
    live = await start_server(make_settings(database_url=through(proxy)))
    async with httpx.AsyncClient(base_url=live.base_url, timeout=DEADLINE) as client:
        assert (await post(client, [make_event()])).status_code == 200
        assert_answered(await read_all(client))

    sockets = sockets_to(proxy.port)
    try:
        assert len(sockets) >= 2  # one of each pool at least
        for sock in sockets:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == db.KEEPALIVE_IDLE
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == db.KEEPALIVE_INTERVAL
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == db.KEEPALIVE_COUNT
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == db.USER_TIMEOUT * 1000
    finally:
        for sock in sockets:
            sock.close()

    names = ["tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout"]
    names += ["idle_in_transaction_session_timeout", "lock_timeout"]
    query = text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)")
    async with live.context.engine.connect() as conn:
        server = dict((await conn.execute(query, {"names": names})).all())
    assert server == {
        "tcp_keepalives_idle": str(db.KEEPALIVE_IDLE),
        "tcp_keepalives_interval": str(db.KEEPALIVE_INTERVAL),
        "tcp_keepalives_count": str(db.KEEPALIVE_COUNT),
        "tcp_user_timeout": str(db.USER_TIMEOUT * 1000),
        "idle_in_transaction_session_timeout": str(db.IDLE_IN_TRANSACTION_TIMEOUT * 1000),
        "lock_timeout": "0",  # only ingest's sessions give up on a lock (tests/receiver/test_commit.py)
    }


# --- in a network namespace of its own ------------------------------------------------------------


def _namespace_missing() -> str | None:
    """Why the namespace test cannot run here, or None."""
    if not is_postgres():
        return "PostgreSQL's connections"
    if os.geteuid() != 0:
        return "making a network namespace and routing rules needs root"
    if not (shutil.which("unshare") and shutil.which("ip")):
        return "needs unshare and ip (util-linux, iproute2)"
    return None


def _unix_socket_url() -> str | None:
    """The test database's URL over its Unix socket, which a private network namespace still reaches."""
    assert PG_URL is not None
    directories, port = asyncio.run(_socket_settings(plain_url(PG_URL)))
    for directory in (d.strip() for d in directories.split(",")):
        if directory.startswith("/") and Path(directory, f".s.PGSQL.{port}").exists():
            tcp = make_url(PG_URL)
            url = URL.create(tcp.drivername, tcp.username, tcp.password, database=tcp.database)
            return url.update_query_dict({"host": directory, "port": port}).render_as_string(False)
    return None


async def _socket_settings(url: str) -> tuple[str, str]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SHOW unix_socket_directories"), await conn.fetchval("SHOW port")
    finally:
        await conn.close()


@pytest.mark.skipif(bool(_namespace_missing()), reason=_namespace_missing() or "")
def test_a_silent_database_host_in_a_private_network_namespace() -> None:
    """Runs test_serving_while_the_database_host_is_silent in a new network namespace: its own
    loopback, and the local routing table moved after the rules that drop the relay's packets."""
    url = _unix_socket_url()
    if url is None:
        pytest.skip("the test database has no Unix socket to reach it from another network namespace")
    setup = "ip link set lo up && ip rule add pref 100 lookup local && ip rule del pref 0"
    test = f"{Path(__file__).name}::test_serving_while_the_database_host_is_silent"
    command = ["unshare", "--net", "sh", "-c", f'{setup} && exec "$@"', "sh"]
    command += [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/{test}"]
    env = {**os.environ, "TEST_DATABASE_URL": url, "LOGRELAY_TEST_NETNS": "1"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert "1 passed" in done.stdout, done.stdout[-5000:]


@contextlib.contextmanager
def silence(port: int) -> Iterator[None]:
    """Nothing comes back from `port` for the block (in this namespace only): no answer, no ACK, no
    SYN-ACK, no RST. What is sent to it may arrive (a commit's outcome is then unknown), but is never
    acknowledged, as with a host gone silent. Dropping the way there too would refuse new connections
    at once (a blackhole route's EINVAL) rather than let them wait for an answer."""
    rule = ["pref", "10", "ipproto", "tcp", "sport", str(port), "blackhole"]
    subprocess.run(["ip", "rule", "add", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "rule", "del", *rule], check=True)


@pytest.mark.skipif(not IN_NAMESPACE, reason="run by test_a_silent_database_host_in_a_private_...")
async def test_serving_while_the_database_host_is_silent(
    proxy: DatabaseProxy,
    receiver: Receiver,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., Any],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`serve` with its loops, and the database's host goes silent. Ingest answers 503 within
    COMMIT_TIMEOUT; reads and /readyz answer 503 once their connection fails; the delivery,
    housekeeping and poller loops each log a failure rather than hang. The host comes back after a
    failover (its old sessions gone), and all of it works again: the refused events, sent again, are
    stored, every failure event is delivered once, and the poller reads what came meanwhile.

    The timings are shortened (keepalive after 1 s, 2 probes 1 s apart; 3 s for unacknowledged
    data; 2 s to connect); the defaults work the same way, in about a minute."""
    for name, seconds in [("KEEPALIVE_IDLE", 1), ("KEEPALIVE_INTERVAL", 1), ("KEEPALIVE_COUNT", 2)]:
        monkeypatch.setattr(db, name, seconds)
    monkeypatch.setattr(db, "USER_TIMEOUT", 3)
    monkeypatch.setattr(db, "CONNECT_TIMEOUT", 2)
    async with serving_with_workers(
        through(proxy), receiver, make_settings, start_server, engine, caplog, monkeypatch, commit_timeout=2.0
    ) as serving:
        client, before = serving.client, serving.before
        refused = [make_event(type="f") for _ in range(2)]
        late = make_logs(2, first=10)
        with silence(proxy.port):
            serving.fake.add(late)
            await serving.loops_failed()
            assert_unavailable(await post(client, refused))
            assert_unavailable(await post(client, refused))  # after the first timeout, too
            for response in await read_all(client):
                assert_unavailable(response)
            assert_unavailable(await client.get("/readyz"))
            assert (await client.get("/healthz")).status_code == 200

        async with control_connection() as control:  # PG_URL is the Unix socket: no relay between
            await terminate_backends(control)
        await eventually(closes_seen(proxy.port), "the relay's cut connections to be closed here")
        after = [make_event(type="f") for _ in range(3)]
        stored = await post(client, after)
        assert stored.status_code == 200, stored.text
        assert stored.json()["stored"] == 3
        retried = await post(client, refused)  # Auth0 sends them again
        assert retried.status_code == 200, retried.text
        assert_answered(await read_all(client))
        assert (await client.get("/readyz")).status_code == 200

        await serving.caught_up(late)

    sent = [e["log_id"] for e in before + refused + after]
    assert sorted(event["log_id"] for event in receiver.events()) == sorted(sent)  # each once
    assert await stored_ids(engine) >= set(sent)
