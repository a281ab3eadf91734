"""Run the Alembic history: `logrelay migrate`, and `serve` on the embedded SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.config import Settings


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


async def upgrade_async(settings: Settings) -> None:
    # env.py runs its own event loop, so it needs a thread of its own.
    await asyncio.to_thread(upgrade, settings)
