"""Run the Alembic history: `logrelay migrate`, and `serve` on the embedded SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.config import Settings
from app.db import make_engine, sqlite_path
from app.files import exclusive_lock


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


class SchemaError(Exception):
    """The database's schema is one this release cannot use; the message says what to do."""


def upgrade(settings: Settings, revision: str = "head") -> None:
    with _one_at_a_time(settings):
        if revision == "head":
            _known(settings, _current(settings))
        command.upgrade(alembic_config(settings), revision)


@contextmanager
def _one_at_a_time(settings: Settings) -> Iterator[None]:
    """Processes migrating one database at once (serve and worker starting together) take turns, and
    the later ones find it current. PostgreSQL: an advisory lock in migrations/env.py."""
    path = sqlite_path(settings)
    if path is None:
        yield
        return
    with exclusive_lock(path.with_name(path.name + "-migrate.lock")):
        yield


def downgrade(settings: Settings, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings), revision)


def pending(settings: Settings) -> bool:
    """Whether the database is behind the newest revision of the history (SchemaError if it is ahead)."""
    current = _current(settings)
    return _known(settings, current) != current


def _known(settings: Settings, current: str | None) -> str:
    """This release's newest revision, after checking that it knows the database's own."""
    scripts = ScriptDirectory.from_config(alembic_config(settings))
    head = scripts.get_current_head()
    assert head is not None
    if current is not None and current not in {script.revision for script in scripts.walk_revisions()}:
        raise SchemaError(
            f"the database schema is at revision {current}, newer than this release knows (up to {head}): "
            "run the release that migrated it, or downgrade the database with that release first"
        )
    return head


def _current(settings: Settings) -> str | None:
    async def current() -> str | None:
        engine = make_engine(settings)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
        finally:
            await engine.dispose()

    return asyncio.run(current())
