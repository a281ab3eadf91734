"""Who holds the SQLite lease (`token:pid:host`), and whether that process is gone."""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import uuid


@functools.cache
def host_id() -> str:
    """This host, as far as pids go: the hostname and the pid namespace (a container sharing the
    database file sees other pids), as a digest short enough for lease_owner."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{namespace}".encode()).hexdigest()[:16]


def new_lease_owner() -> str:
    """`token:pid:host`: the random token fences writes; the pid and host let another process on
    this host see that the holder is gone (SQLite files are shared on one host only)."""
    return f"{uuid.uuid4().hex}:{os.getpid()}:{host_id()}"


def local_pid(owner: str) -> int | None:
    """The holder's pid when the owner names a process on this host; None for an owner in the old
    format (a bare token) or from another host, which count as alive until the lease expires."""
    parts = owner.split(":")
    if len(parts) != 3 or parts[2] != host_id() or not parts[1].isascii() or not parts[1].isdigit():
        return None
    return int(parts[1])


def holder_is_gone(owner: str) -> bool:
    """True only when the owner is a process on this host that no longer exists."""
    pid = local_pid(owner)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process exists; no such pid can
        return False
    return False
