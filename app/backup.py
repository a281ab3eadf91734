"""`logrelay backup`: a consistent copy of the SQLite database, taken while logrelay runs.

Copying the file is not a backup in WAL mode: the newest commits live in the -wal file until a
checkpoint. VACUUM INTO writes a compact snapshot as of one read transaction, beside the writer. It is
written under a temporary name of its own, synced, checked, and only then linked to the path asked
for (never over a file there), so a file at that path is always a whole backup. PostgreSQL has its
own tools (pg_dump), which know it better.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url


class BackupError(Exception):
    """A backup that cannot be made, said in one line that names what to change."""


def backup_sqlite(database_url: str, target: Path) -> int:
    """Write a checked snapshot of the SQLite database at `database_url` to `target`; its size."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        raise BackupError("backup copies the SQLite database; on PostgreSQL use pg_dump")
    source = Path(url.database or "")
    if not url.database or not source.is_file():
        raise BackupError(f"there is no SQLite database at {source} (check DATABASE_URL)")
    if target.exists():
        raise BackupError(f"{target} exists; name a new file")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is not a directory")
    # A name of its own, so that two backups to one PATH never write, check or rename each other's
    # copy; made empty, 0600 like the database: the copy holds secrets (destinations' credentials).
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    partial = Path(name)
    try:
        _snapshot(source, partial)
        _check(partial)
        _sync(partial)
        _name(partial, target)
        _sync(target.parent)
    finally:
        partial.unlink(missing_ok=True)
    return target.stat().st_size


def _name(partial: Path, target: Path) -> None:
    """Give the copy its name, never over a file made since the check (another backup's, say)."""
    try:
        os.link(partial, target)  # refuses a target that exists, where a rename would replace it
        return
    except FileExistsError:
        raise BackupError(f"{target} exists; name a new file") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    # A file system without hard links (FAT, some network shares): check, then rename.
    if target.exists():
        raise BackupError(f"{target} exists; name a new file")
    partial.rename(target)


def _snapshot(source: Path, partial: Path) -> None:
    # Read-only: a backup never creates, migrates or checkpoints the database it copies.
    with contextlib.closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout=30000")
        try:
            db.execute("VACUUM INTO ?", (str(partial),))
        except sqlite3.Error as exc:
            raise BackupError(f"cannot copy {source}: {exc}") from None


def _check(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        (result,) = db.execute("PRAGMA quick_check").fetchone()
    if result != "ok":
        raise BackupError(f"the copy failed its check ({result}); nothing was written")


def _sync(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
