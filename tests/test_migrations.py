"""The one Alembic history: up to head, down to base, up again, on SQLite and PostgreSQL; and the
models agree with it (autogenerate finds no difference)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from app import migrate, models  # noqa: F401  (models registers the tables)
from app.config import Settings
from app.db import Base, make_engine
from tests.conftest import is_postgres

TABLES = {t.name for t in Base.metadata.sorted_tables}


@pytest.fixture
def fresh_settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    """An empty SQLite file, or the test PostgreSQL database (left at head whatever happens)."""
    if is_postgres():
        return make_settings()
    return make_settings(database_url=f"sqlite:///{tmp_path / 'fresh.db'}")


def head(settings: Settings) -> str:
    head_revision = ScriptDirectory.from_config(migrate.alembic_config(settings)).get_current_head()
    assert head_revision
    return head_revision


async def inspect_db(settings: Settings) -> tuple[set[str], str | None]:
    """The tables (besides alembic_version) and the recorded revision."""

    def read(conn: Connection) -> tuple[set[str], str | None]:
        names = set(inspect(conn).get_table_names())
        return names - {"alembic_version"}, MigrationContext.configure(conn).get_current_revision()

    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def schema_diff(settings: Settings) -> list[Any]:
    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(fresh_settings: Settings) -> None:
    settings = fresh_settings
    try:
        if is_postgres():
            await asyncio.to_thread(migrate.downgrade, settings, "base")
        assert (await inspect_db(settings))[0] & TABLES == set()

        await asyncio.to_thread(migrate.upgrade, settings)
        assert await inspect_db(settings) == (TABLES, head(settings))

        await asyncio.to_thread(migrate.downgrade, settings, "base")
        tables, revision = await inspect_db(settings)
        assert tables == set()
        assert revision is None

        await asyncio.to_thread(migrate.upgrade, settings)
        assert await inspect_db(settings) == (TABLES, head(settings))
        # Upgrading at head is a no-op, not an error.
        await asyncio.to_thread(migrate.upgrade, settings)
    finally:
        await asyncio.to_thread(migrate.upgrade, settings)
    assert await inspect_db(settings) == (TABLES, head(settings))


async def test_autogenerate_finds_no_difference(fresh_settings: Settings) -> None:
    await asyncio.to_thread(migrate.upgrade, fresh_settings)
    assert await schema_diff(fresh_settings) == []


async def test_sqlite_migration_creates_the_data_directory(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """`serve` migrates the embedded SQLite under ./data on first start, with no directory yet."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'new' / 'dir' / 'logrelay.db'}")
    await asyncio.to_thread(migrate.upgrade, settings)
    assert (tmp_path / "new" / "dir" / "logrelay.db").is_file()
    assert (await inspect_db(settings))[0] == TABLES


async def test_autogenerate_check_sees_a_drift(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The comparison above is not vacuous: a missing index is reported."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'drift.db'}")
    await asyncio.to_thread(migrate.upgrade, settings)
    engine = make_engine(settings)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP INDEX ix_quarantined_lines_received_at")
    finally:
        await engine.dispose()
    diff = await schema_diff(settings)
    assert [d[0] for d in diff] == ["add_index"]


def test_pending_tells_a_fresh_database_from_a_current_one(tmp_path: Path, database_url: str) -> None:
    """`serve` on PostgreSQL refuses to start on a schema that `logrelay migrate` has not brought up."""
    fresh = Settings(database_url=f"sqlite:///{tmp_path / 'fresh.db'}", _env_file=None)  # type: ignore[call-arg]
    assert migrate.pending(fresh)
    migrate.upgrade(fresh)
    assert not migrate.pending(fresh)
    current = Settings(database_url=database_url, _env_file=None)  # type: ignore[call-arg]
    assert not migrate.pending(current)


async def test_stored_event_data_survives_the_change_to_json(fresh_settings: Settings) -> None:
    """0011 makes `data` json on PostgreSQL (it was jsonb): stored events keep their data, both ways."""
    settings = fresh_settings
    data = {"type": "f", "log_id": "m1", "details": {"a": ["é", '"q"\n', 2.5, None, True], "b": {}}}
    pg = is_postgres()
    insert = sa.text(
        "INSERT INTO log_events (log_id, date, type, category, data, source, received_at, id_generated) "
        "VALUES ('m1', '2026-11-24 00:00:00', 'f', 'failure', CAST(:data AS {}), 'stream', "
        "'2026-11-24 00:00:00', false)".format("jsonb" if pg else "text")
    )
    read = sa.text(
        "SELECT CAST(data AS text), CAST(pg_typeof(data) AS text) FROM log_events"
        if pg
        else "SELECT data, typeof(data) FROM log_events"
    )

    async def run(statement: sa.TextClause, **params: str) -> tuple[dict[str, Any], str] | None:
        engine = make_engine(settings)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(statement, params)
                if not result.returns_rows:
                    return None
                stored, kind = result.one()
                return orjson.loads(stored), kind
        finally:
            await engine.dispose()

    try:
        await asyncio.to_thread(migrate.upgrade, settings)
        await asyncio.to_thread(migrate.downgrade, settings, "0010")
        await run(insert, data=orjson.dumps(data).decode())

        await asyncio.to_thread(migrate.upgrade, settings)
        assert await run(read) == (data, "json" if pg else "text")

        await asyncio.to_thread(migrate.downgrade, settings, "0010")
        assert await run(read) == (data, "jsonb" if pg else "text")
    finally:
        await asyncio.to_thread(migrate.upgrade, settings)
