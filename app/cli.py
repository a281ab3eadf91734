"""The `logrelay` command: serve, migrate, worker, poll."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError

from app import __version__, migrate
from app.config import Settings
from app.observability import configure_logging, uvicorn_log_config
from app.tokens import TokenFileError, Tokens, load_tokens

cli = typer.Typer(help="logrelay: a durable, deduplicated home for Auth0 tenant logs.", no_args_is_help=True)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and .env; a bad setting exits with its name and the problem."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"]).upper() or "settings"
            typer.echo(f"logrelay: invalid setting {name}: {error['msg']}", err=True)
        raise typer.Exit(2) from None


def prepare_database(settings: Settings) -> None:
    """Migrate the embedded SQLite; on PostgreSQL, shared by replicas, only check it is current."""
    if settings.is_sqlite:
        migrate.upgrade(settings)
        return
    try:
        behind = migrate.pending(settings)
    except Exception as exc:
        typer.echo(f"logrelay: cannot reach the database ({type(exc).__name__}: {exc})", err=True)
        raise typer.Exit(1) from None
    if behind:
        typer.echo("logrelay: the database schema is not current; run `logrelay migrate` first", err=True)
        raise typer.Exit(2)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [env HOST; default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env PORT; default 8000]")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM) for HTTPS")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM) for HTTPS")] = None,
) -> None:
    """Run the API (and, unless RUN_WORKERS=false, the delivery and poller loops)."""
    settings = load_settings(host=host, port=port)
    configure_logging(settings.service_log_level)
    prepare_database(settings)
    try:
        tokens = load_tokens(settings)
    except TokenFileError as exc:
        typer.echo(f"logrelay: {exc}", err=True)
        raise typer.Exit(2) from None
    _announce(settings, tokens, https=ssl_certfile is not None)
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


@cli.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the database schema (Alembic) to the latest revision."""
    settings = load_settings()
    configure_logging(settings.service_log_level)
    migrate.upgrade(settings)
    typer.echo("logrelay: database is at the latest revision")


@cli.command()
def worker() -> None:
    """Run the delivery and poller loops without the API."""
    settings = load_settings()
    configure_logging(settings.service_log_level)
    prepare_database(settings)
    asyncio.run(_run_workers(settings))


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
        await stop.wait()
        await workers.stop()


@cli.command()
def poll(once: Annotated[bool, typer.Option("--once", help="Run one pass and exit")] = False) -> None:
    """Read the Auth0 Management API logs from the checkpoint (non-zero exit on failure)."""
    settings = load_settings()
    configure_logging(settings.service_log_level)
    prepare_database(settings)
    from app.poller import run_poll_command

    sys.exit(asyncio.run(run_poll_command(settings, once=once)))


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _announce(settings: Settings, tokens: Tokens, *, https: bool) -> None:
    scheme = "https" if https else "http"
    typer.echo(f"logrelay {__version__} on {scheme}://{settings.host}:{settings.port}", err=True)
    if not tokens.generated:
        if tokens.path and tokens.path.exists():
            typer.echo(f"logrelay: tokens that were not set are kept in {tokens.path}", err=True)
        return
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
