"""A TCP relay on 127.0.0.1 between logrelay and the test database, which a test can cut (a host that
went away) or silence (a host that went quiet), as a load balancer or pgbouncer in front of
PostgreSQL would show it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy.engine import make_url


class DatabaseProxy:
    """`down()` cuts every connection through the relay and refuses new ones (connection refused) until
    `up()`, as a database host that went away. `blackhole()` relays no more bytes, and keeps every
    socket open, until `resume()`: a host gone silent (no RST, no FIN), as after a failover, a NAT's
    timeout or a pulled cable. Its kernel still acknowledges what it receives, so that only
    logrelay's own deadlines end the wait, not TCP's.

    `url` is the database's; `through(proxy)` is the same database through the relay.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.target = database_address(url)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._pipes: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for client in list(self._clients):
            client.transport.close()
        for client, upstream in list(self._pipes):
            client.transport.close()
            upstream.transport.close()
        self._flowing.set()  # what a blackhole held finds its sockets closed
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def blackhole(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._clients.add(writer)
        try:
            await self._flowing.wait()  # a silent host's handshake does not end
            if writer.transport.is_closing():  # cut by down() meanwhile
                return
            try:
                up_reader, up_writer = await self._connect()
            except OSError:
                writer.transport.abort()
                return
            pipe = (writer, up_writer)
            self._pipes.add(pipe)
            try:
                await asyncio.gather(
                    _pump(reader, up_writer, self._flowing), _pump(up_reader, writer, self._flowing)
                )
            finally:
                self._pipes.discard(pipe)
        finally:
            self._clients.discard(writer)
            self._tasks.discard(task)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.target, str):
            return await asyncio.open_unix_connection(self.target)
        return await asyncio.open_connection(*self.target)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
    with contextlib.suppress(OSError):
        while True:
            await flowing.wait()
            if not (data := await reader.read(65536)):
                break
            await flowing.wait()  # bytes read as the host went silent are held, not delivered
            writer.write(data)
            await writer.drain()
    writer.transport.close()  # the end of one side is the end of the other


def database_address(url: str) -> tuple[str, int] | str:
    """Where the database of a PostgreSQL URL listens: (host, port), or the path of its Unix socket
    when the URL names a directory (`postgresql://user@/db?host=/var/run/postgresql`)."""
    parsed = make_url(url)
    directory = parsed.query.get("host")
    port = int(str(parsed.query.get("port") or parsed.port or 5432))
    if isinstance(directory, str) and directory.startswith("/"):
        return f"{directory}/.s.PGSQL.{port}"
    return (parsed.host or "127.0.0.1", port)


def through(proxy: DatabaseProxy) -> str:
    """The database's URL, through the relay."""
    parsed = make_url(proxy.url).difference_update_query(["host", "port"])
    return parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
