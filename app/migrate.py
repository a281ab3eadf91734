"""Run the Alembic history: `logrelay migrate`, and `serve` on the embedded SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.config import Settings
from app.db import make_engine


def alembic_config(settings: Settings) -> Config:
    here = Path(__file__).resolve().parent
    # An installed wheel carries the history as app/migrations; a source checkout has it at the top.
    scripts = here / "migrations"
    if not scripts.is_dir():
        scripts = here.parent / "migrations"
    config = Config()
    config.set_main_option("script_location", str(scripts))
    config.attributes["settings"] = settings
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings), revision)


def pending(settings: Settings) -> bool:
    """Whether the database is behind the newest revision of the history."""
    head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()

    async def current() -> str | None:
        engine = make_engine(settings)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
        finally:
            await engine.dispose()

    return asyncio.run(current()) != head
