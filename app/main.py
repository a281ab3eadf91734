"""The FastAPI application: routes, error handlers, and the lifespan that opens the context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import ModuleType

from fastapi import FastAPI
from starlette.types import ASGIApp

from app import __version__
from app.api import deliveries, destinations, events, health, logs, metrics, poller
from app.api.limits import BodyLimit
from app.config import Settings
from app.context import open_context
from app.errors import add_exception_handlers
from app.responses import JSONResponse
from app.stopping import set_on_shutdown_signals
from app.workers import Workers


def create_app(settings: Settings | None = None, *, run_workers: bool | None = None) -> ASGIApp:
    """The ASGI application `serve` runs: FastAPI, behind the ingest fast path (app.api.logs)."""
    return logs.IngestFastPath(create_fastapi_app(settings, run_workers=run_workers))


def create_worker_app(settings: Settings) -> FastAPI:
    """What `worker --port` serves while its loops run: liveness, readiness and its metrics."""
    return create_fastapi_app(settings, run_workers=True, routers=(metrics, health), openapi_url=None)


def create_fastapi_app(
    settings: Settings | None = None,
    *,
    run_workers: bool | None = None,
    routers: Sequence[ModuleType] = (logs, events, destinations, deliveries, poller, metrics, health),
    openapi_url: str | None = "/openapi.json",
) -> FastAPI:
    settings = settings or Settings()
    workers_on = settings.run_workers if run_workers is None else run_workers

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_context(settings) as context:
            app.state.context = context
            workers = Workers(context)
            if workers_on:
                workers.start()
            try:
                with set_on_shutdown_signals(context.stopping):
                    yield
            finally:
                await workers.stop()

    app = FastAPI(
        title="logrelay",
        version=__version__,
        summary="A durable, deduplicated home for Auth0 tenant logs.",
        default_response_class=JSONResponse,
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hook looks up the global providers (and the environment) on every
        # request, a measurable share of a small ingest request; logrelay does not use it.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        openapi_url=openapi_url,
    )
    add_exception_handlers(app)
    app.add_middleware(BodyLimit)
    for module in routers:
        app.include_router(module.router)
    return app
