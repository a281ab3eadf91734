"""Alembic environment: runs on the async engine logrelay itself uses, on SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from app import models  # noqa: F401  (registers the tables)
from app.config import Settings
from app.db import MIGRATE_LOCK, Base, make_engine

target_metadata = Base.metadata


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Replicas migrating at once take turns; the next one reads the version after this one
            # commits (READ COMMITTED) and finds nothing to do.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK})
        context.run_migrations()


async def _run() -> None:
    settings = context.config.attributes.get("settings") or Settings()
    engine = make_engine(settings)
    async with engine.connect() as connection:
        await connection.run_sync(_migrate)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("logrelay migrations run online only: use `logrelay migrate`")
asyncio.run(_run())
