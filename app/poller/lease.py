"""What a pass holds while it may move the checkpoint (Lease), and how PostgreSQL's advisory lock
is named and seen in pg_locks."""

from __future__ import annotations

from dataclasses import dataclass

# pg_try_advisory_lock key: "logrelay" as a 64-bit number.
ADVISORY_KEY = int.from_bytes(b"logrelay", "big")
# The advisory lock as pg_locks shows it (a bigint key as classid, the high 32 bits, and objid), in
# this database only: another database on the server may run a logrelay of its own.
HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()){holder})"
)
KEY = {"high": ADVISORY_KEY >> 32, "low": ADVISORY_KEY & 0xFFFFFFFF}


class LeaseLost(Exception):
    """Another pass took the SQLite lease (this one overran it); its page is rolled back."""


@dataclass(slots=True)
class Lease:
    """Proof that this pass may move the checkpoint. `owner` fences writes on SQLite; on PostgreSQL
    the advisory lock is held by the backend `pid` (owner None), and each write checks it still is."""

    owner: str | None
    seconds: float
    pid: int | None = None
