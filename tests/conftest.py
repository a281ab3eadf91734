"""Test harness: a real database (SQLite, or PostgreSQL when TEST_DATABASE_URL is set), the app
served by a real uvicorn on 127.0.0.1, and real HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import migrate
from app.config import Settings
from app.db import Base, make_engine
from app.main import create_app
from tests.database_proxy import DatabaseProxy
from tests.relay.receiver import Receiver

# Copies of the Auth0 samples and of the log type source, kept in the checkout (fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"

INGEST_TOKEN = "ingest-token-for-tests"
READ_TOKEN = "read-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"
PG_URL = os.environ.get("TEST_DATABASE_URL")


def is_postgres() -> bool:
    return bool(PG_URL)


SQLITE_THREAD = "(_connection_worker_thread)"  # how threading names aiosqlite's thread per connection


@pytest.fixture(autouse=True)
async def sqlite_threads_end() -> AsyncIterator[None]:
    """Each test ends only once the SQLite connection threads it started have. A failed connect
    queues its thread's stop without waiting for it (omnilib/aiosqlite#389): a thread still stopping
    when the test's event loop closes hands its result to a closed loop and dies with 'Event loop is
    closed', reported against whichever test runs next. One still running here is a connection left
    open."""
    before = set(threading.enumerate())
    yield
    deadline = asyncio.get_running_loop().time() + 30.0  # a bound on waiting, not a timing assertion
    while running := [t for t in threading.enumerate() if t not in before and t.name.endswith(SQLITE_THREAD)]:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{len(running)} SQLite connection(s) left open by this test")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """One migrated SQLite file, copied for each test (migrating per test is slow)."""
    if PG_URL:
        return None
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate.upgrade(Settings(database_url=f"sqlite:///{path}", _env_file=None))  # type: ignore[call-arg]
    return path


async def _reset_schema(settings: Settings) -> None:
    engine = make_engine(settings)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[None]:
    if not PG_URL:
        yield
        return
    settings = Settings(database_url=PG_URL, _env_file=None)  # type: ignore[call-arg]
    # A clean schema, whatever an earlier version of the history left in the test database.
    asyncio.run(_reset_schema(settings))
    migrate.upgrade(settings)
    yield


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path | None, pg_schema: None) -> str:
    if PG_URL:
        return PG_URL
    path = tmp_path / "logrelay.db"
    assert sqlite_template is not None
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    """Explicit settings per test; nothing comes from the environment or a .env file."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "data_dir": tmp_path / "data",
            "log_stream_token": INGEST_TOKEN,
            "api_token": READ_TOKEN,
            "admin_token": ADMIN_TOKEN,
            "run_workers": False,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The test's own connection to the database, for setup and assertions."""
    engine = make_engine(settings)
    if PG_URL:
        async with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield engine
    await engine.dispose()


@dataclass
class LiveServer:
    base_url: str
    app: Any
    server: uvicorn.Server

    @property
    def context(self) -> Any:
        return self.app.app.state.context  # create_app's FastAPI app, behind the ingest fast path


@pytest.fixture
async def start_server(engine: AsyncEngine) -> AsyncIterator[Callable[..., Any]]:
    """Start the app on a real socket on 127.0.0.1 (a free port); every one stops with the test."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(settings: Settings, **app_kwargs: Any) -> LiveServer:
        app = create_app(settings, **app_kwargs)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        running.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped during start-up")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        return LiveServer(f"http://127.0.0.1:{port}", app, server)

    yield start
    for server, _ in running:
        server.should_exit = True
    await asyncio.gather(*(task for _, task in running))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (tests/relay/receiver.py), stopped with the test."""
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def proxy() -> AsyncIterator[DatabaseProxy]:
    """A relay in front of the test database (PostgreSQL) that a test can cut or silence."""
    assert PG_URL is not None
    relay = DatabaseProxy(PG_URL)
    await relay.up()
    yield relay
    await relay.down()


@pytest.fixture
async def live(settings: Settings, start_server: Callable[..., Any]) -> LiveServer:
    server: LiveServer = await start_server(settings)
    return server


@pytest.fixture
async def client(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
        yield client


async def status_line_without_the_body(base_url: str, path: str, headers: dict[str, str]) -> bytes:
    """The status line answered to a POST whose head declares a 1 GiB body that never comes: only a
    server that refuses it by its Content-Length answers (one that reads first would wait for ever)."""
    url = httpx.URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        lines = [f"POST {path} HTTP/1.1", f"Host: {url.host}", f"Content-Length: {1024**3}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), timeout=30)  # a bound on waiting for a hang
    finally:
        writer.close()
        with contextlib.suppress(OSError):  # the server may close first
            await writer.wait_closed()


def auth(token: str = INGEST_TOKEN) -> dict[str, str]:
    return {"Authorization": token}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def read_metrics(client: httpx.AsyncClient) -> Samples:
    """GET /metrics with the read token, parsed."""
    response = await client.get("/metrics", headers=bearer(READ_TOKEN))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return scrape(response.text)


@contextlib.asynccontextmanager
async def database_gone(live: LiveServer, url: str | None = None) -> AsyncIterator[None]:
    """The server's engine closed and pointed at a database that cannot be reached (by default, on a
    port nothing listens on), then restored."""
    from sqlalchemy.ext.asyncio import create_async_engine

    context = live.context
    good = context.engine
    if url is None:
        url = "sqlite+aiosqlite:////nonexistent-dir/x/y.db"
        if is_postgres():
            url = "postgresql+asyncpg://postgres@127.0.0.1:1/nothing"
    context.engine = create_async_engine(url)
    try:
        yield
    finally:
        await context.engine.dispose()
        context.engine = good


def scrape(text: str) -> Samples:
    """A Prometheus exposition as {(sample name, labels): value}, parsed by prometheus-client."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, /, **labels: str) -> float:
    """One sample's value; 0 for a counter not yet incremented (prometheus shows none then)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@contextlib.contextmanager
def statements_naming(engine: AsyncEngine, table: str) -> Iterator[list[tuple[str, Any]]]:
    """The statements run on `engine` meanwhile that name `table`, with their parameters, as sent."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, sql: str, parameters: Any, context: Any, many: bool) -> None:
        if table in sql:
            seen.append((sql, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
