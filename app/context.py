"""What a running logrelay holds: settings, the engine, the group committer, tokens and one
outbound HTTP client. `serve` and `worker` open it the same way."""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.committer import AsyncCommitter, Committer, SQLiteCommitter
from app.config import Settings
from app.db import make_engine, make_ingest_engine, make_sqlite_writer_engine
from app.destinations import env_destination_specs, sync_env_destinations
from app.extension import extension_destination_spec
from app.tokens import Tokens, load_tokens
from app.wal import run_checkpoints

USER_AGENT = f"logrelay/{__version__}"
# PostgreSQL group commits in parallel. Two overlap one commit's flush with the next one's statement;
# more only split the same rows into smaller groups that contend for the same index pages (README,
# Performance: 4 writers gave 0.62-0.65 of the ceiling at batch 100 where 2 gave 0.69-0.75).
INGEST_WRITERS = 2


@dataclass
class Context:
    settings: Settings
    engine: AsyncEngine
    committer: Committer
    http: httpx.AsyncClient
    tokens: Tokens
    # Set when the process begins to shut down: the background loops and a pass that the API started
    # end cleanly at the next page or pause.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


GC_YOUNG_THRESHOLD = 20_000


@functools.cache  # once per process
def relax_garbage_collector() -> None:
    """Fewer, cheaper garbage collections under ingest load.

    Parsing allocates a few dozen containers per event, so at CPython's default threshold (700) the
    young generation is collected hundreds of times a second, and each full collection walks every
    object the process holds. Objects made at start-up live as long as the process: frozen, no
    collection walks them again. Measured: 6-18% more events/s at batch 1 and 100.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


@asynccontextmanager
async def open_context(settings: Settings) -> AsyncIterator[Context]:
    engine = make_engine(settings)
    committer: Committer
    if settings.is_sqlite:  # one writer at a time
        committer = SQLiteCommitter(make_sqlite_writer_engine(settings), max_rows=settings.commit_max_rows)
    else:  # a few transactions in parallel, on connections of their own
        committer = AsyncCommitter(
            make_ingest_engine(settings, writers=INGEST_WRITERS),
            max_rows=settings.commit_max_rows,
            writers=INGEST_WRITERS,
            timeout=settings.commit_timeout,
        )
    http = httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT},
        timeout=settings.delivery_timeout,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
    )
    async with engine.begin() as conn:
        specs = env_destination_specs(settings)
        if extension := extension_destination_spec(settings):
            specs.append(extension)
        await sync_env_destinations(conn, specs, settings.signing_secret_grace)
    committer.start()
    relax_garbage_collector()
    stop = asyncio.Event()
    checkpoints = asyncio.create_task(run_checkpoints(engine, stop)) if settings.is_sqlite else None
    try:
        yield Context(settings, engine, committer, http, load_tokens(settings))
    finally:
        await committer.stop()
        stop.set()
        if checkpoints:
            await checkpoints
        await http.aclose()
        await engine.dispose()
