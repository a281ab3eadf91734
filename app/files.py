"""Files that logrelay creates itself: readable by their owner only, since they hold secrets (the
tokens, destinations' credentials, the Management API token)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create `path` and its parents if missing; the folder itself is created 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def private_file(path: Path) -> None:
    """Create `path` empty, 0600, if it is missing; an existing file keeps the mode it has.

    SQLite gives a database's -wal and -shm files the mode of the database file.
    """
    if not path.exists():
        private_dir(path.parent)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created 0600), for processes that share a folder."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file is closed
        yield
    finally:
        os.close(fd)
