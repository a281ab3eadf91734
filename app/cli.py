"""The `logrelay` command: serve, migrate, worker, poll."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import uvicorn
from dotenv import dotenv_values
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app import __version__, migrate
from app.config import Settings, misspelt_settings
from app.observability import configure_logging, uvicorn_log_config
from app.tokens import TokenFileError, Tokens, load_tokens

cli = typer.Typer(help="logrelay: a durable, deduplicated home for Auth0 tenant logs.", no_args_is_help=True)
log = logging.getLogger("app.cli")


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"logrelay: {message}", err=True)
    raise typer.Exit(code)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and .env; a bad setting exits with its name and the problem."""
    for name, meant in misspelt_settings([*os.environ, *dotenv_values(".env")]):
        typer.echo(f"logrelay: {name} is not a setting and is ignored; did you mean {meant}?", err=True)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"]).upper()
            message = error["msg"].removeprefix("Value error, ")
            typer.echo(f"logrelay: {f'invalid setting {name}: ' if name else ''}{message}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def start_up_errors() -> Iterator[None]:
    """What stops a command from starting, as one line that names it (exit 2: fix a setting or a
    file; exit 1: the database cannot be reached, which may pass), never a traceback."""
    try:
        yield
    except (migrate.SchemaError, TokenFileError) as exc:
        fail(str(exc), 2)
    except DBAPIError as exc:  # the driver's first line; SQLAlchemy's text adds the statement
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        if isinstance(exc, (OperationalError, InterfaceError)):
            fail(f"cannot reach the database ({reason})", 1)
        fail(f"the database refused: {reason}", 1)
    except OSError as exc:
        if exc.filename:  # DATA_DIR, the SQLite file or tokens.json
            fail(f"cannot use {exc.filename}: {exc.strerror}", 2)
        fail(f"cannot reach the database ({type(exc).__name__}: {exc})", 1)


def prepare_database(settings: Settings) -> None:
    """Migrate the embedded SQLite; on PostgreSQL, shared by replicas, only check it is current."""
    with start_up_errors():
        if settings.is_sqlite:
            migrate.upgrade(settings)
            return
        behind = migrate.pending(settings)
    if behind:
        fail("the database schema is not current; run `logrelay migrate` first", 2)


def prepare_tokens(settings: Settings) -> Tokens:
    """The tokens, generated and kept when unset. Whichever command generates them prints them."""
    with start_up_errors():
        tokens = load_tokens(settings)
    if tokens.generated:
        _announce_generated(tokens)
    return tokens


def check_tls(certfile: Path | None, keyfile: Path | None) -> None:
    """Load the certificate and key once here, so that a bad one is a clear error before start-up."""
    if keyfile and not certfile:
        fail("--ssl-keyfile needs --ssl-certfile", 2)
    if certfile:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            # load_cert_chain's errors name no file ("[Errno 2] No such file or directory"): name them.
            files = f"{certfile} and key {keyfile}" if keyfile else str(certfile)
            problem = exc.strerror if isinstance(exc, FileNotFoundError) and exc.strerror else str(exc)
            fail(f"cannot use the TLS certificate {files} ({problem})", 2)


def check_listen(host: str, port: int) -> None:
    """Bind the address once here, as uvicorn will: a port that is taken (or needs privileges) is one
    clear line before start-up, not a log line after the loops have started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            fail(f"cannot listen on {host}:{port} ({exc.strerror or exc})", 2)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (env HOST; default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env PORT; default 8000)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM) for HTTPS")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM) for HTTPS")] = None,
) -> None:
    """Run the API (and, unless RUN_WORKERS=false, the delivery and poller loops)."""
    settings = load_settings(host=host, port=port)
    configure_logging(settings.service_log_level)
    check_tls(ssl_certfile, ssl_keyfile)
    check_listen(settings.host, settings.port)
    prepare_database(settings)
    scheme = "https" if ssl_certfile else "http"
    typer.echo(f"logrelay {__version__} on {scheme}://{settings.host}:{settings.port}", err=True)
    tokens = prepare_tokens(settings)
    if not tokens.generated and tokens.path and tokens.path.exists():
        typer.echo(f"logrelay: tokens that were not set are kept in {tokens.path}", err=True)
    with shared_metrics(workers):
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
            ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
            log_config=uvicorn_log_config(settings.service_log_level),
            loop="uvloop",
            http="httptools",
            proxy_headers=True,
            timeout_graceful_shutdown=30,
        )


@contextmanager
def shared_metrics(workers: int) -> Iterator[None]:
    """Sum /metrics' counters over `serve --workers N`'s processes (prometheus-client's multiprocess
    mode) in a new private directory, so that a restart counts from zero rather than adding the files
    of processes that are gone. A PROMETHEUS_MULTIPROC_DIR set by the operator is used as it is."""
    from app.metrics import MULTIPROCESS_DIR

    if workers == 1 or os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    path = tempfile.mkdtemp(prefix="logrelay-metrics-")  # 0700
    os.environ[MULTIPROCESS_DIR] = path  # the workers inherit it
    try:
        yield
    finally:
        del os.environ[MULTIPROCESS_DIR]
        shutil.rmtree(path, ignore_errors=True)


@cli.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the database schema (Alembic) to the latest revision."""
    settings = load_settings()
    configure_logging(settings.service_log_level)
    with start_up_errors():
        migrate.upgrade(settings)
    typer.echo("logrelay: database is at the latest revision")


@cli.command()
def worker(
    host: Annotated[str | None, typer.Option(help="Address for --port (env HOST; default 127.0.0.1)")] = None,
    port: Annotated[
        int | None, typer.Option(help="Serve /healthz, /readyz and /metrics on this port (env WORKER_PORT)")
    ] = None,
) -> None:
    """Run the delivery and poller loops without the API."""
    settings = load_settings(host=host, worker_port=port)
    configure_logging(settings.service_log_level)
    if settings.worker_port is not None:
        check_listen(settings.host, settings.worker_port)
    prepare_database(settings)
    prepare_tokens(settings)
    if settings.worker_port is None:
        asyncio.run(_run_workers(settings))
        return
    from app.main import create_worker_app

    address = f"http://{settings.host}:{settings.worker_port}"
    typer.echo(f"logrelay {__version__} worker; health and metrics on {address}", err=True)
    # uvicorn owns the signals; its shutdown ends the app's lifespan, which stops the loops.
    uvicorn.run(
        create_worker_app(settings),
        host=settings.host,
        port=settings.worker_port,
        log_config=uvicorn_log_config(settings.service_log_level),
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=30,
    )


async def _run_workers(settings: Settings) -> None:
    from app.context import open_context
    from app.workers import Workers

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_context(settings) as context:
        workers = Workers(context)
        workers.start()
        log.info("worker started")
        await stop.wait()
        log.info("worker stopping")
        await workers.stop()
    log.info("worker stopped")


@cli.command()
def poll(once: Annotated[bool, typer.Option("--once", help="Run one pass and exit")] = False) -> None:
    """Read the Auth0 Management API logs from the checkpoint (non-zero exit on failure)."""
    settings = load_settings()
    configure_logging(settings.service_log_level)
    if not settings.auth0_domain:  # before any database or token is made: cron mails what this prints
        fail("set AUTH0_DOMAIN, AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET to poll", 2)
    prepare_database(settings)
    prepare_tokens(settings)
    from app.poller.command import run_poll_command

    sys.exit(asyncio.run(run_poll_command(settings, once=once)))


@cli.command()
def backup(path: Annotated[Path, typer.Argument(help="The new file to write the copy to")]) -> None:
    """Copy the SQLite database to PATH, consistently, while logrelay runs (PostgreSQL: pg_dump)."""
    settings = load_settings()
    from app.backup import BackupError, backup_sqlite

    try:
        size = backup_sqlite(settings.database_url, path)
    except BackupError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"cannot write {exc.filename or path}: {exc.strerror or exc}", 2)
    typer.echo(f"logrelay: backed up to {path} ({size:,} bytes, checked)")


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _announce_generated(tokens: Tokens) -> None:
    """Print newly generated tokens, once: this is the only time logrelay shows them."""
    typer.echo(f"\nlogrelay generated tokens and kept them in {tokens.path}:", err=True)
    for name, value in tokens.generated.items():
        typer.echo(f"  {name}={value}", err=True)
    if "LOG_STREAM_TOKEN" in tokens.generated:
        typer.echo(
            "\nIn Auth0 (Monitoring > Streams > Custom Webhook) enter:\n"
            "  Payload URL:          https://<your-public-host>/api/logs\n"
            f"  Authorization Token:  {tokens.generated['LOG_STREAM_TOKEN']}\n"
            "  Content Type:         application/json\n"
            "  Content Format:       JSON Lines (JSON Array and JSON Object work too)\n",
            err=True,
        )


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
