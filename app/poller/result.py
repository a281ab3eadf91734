"""What one poll pass did (PassResult), and why none ran (Skipped)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Literal


@dataclass(slots=True)
class PassResult:
    ran: bool
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    run_id: int | None = None
    start_checkpoint: str | None = None
    checkpoint: str | None = None
    logs_read: int = 0  # each log once, though the oldest logs are read twice (see Pass._find_start)
    stored: int = 0
    pages: int = 0
    rate_limit_waits: int = 0
    caught_up: bool = False
    resume_at: datetime | None = None  # a rate limit ended the pass: the next starts no earlier
    skipped: Skipped | None = None  # why no pass ran (ran=False)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    alert: bool = False  # a warning Slack must hear about even when the pass succeeded

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, object]:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("warnings", "alert")}
        return shown | {"warning": "; ".join(self.warnings) or None}


# Why no pass ran: another pass holds the lock; resume_at is still ahead; another process ran the
# pass a loop planned (see poll_once).
Skipped = Literal["running", "rate_limited", "ran_elsewhere"]


class Stopped(Exception):
    """The pass ends early without an error: budget spent, rate limit, or shutdown."""
