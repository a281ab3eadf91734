"""POLL_SCHEDULE: an interval (`30s`, `5m`, `1h`, `1d`, or plain seconds) or a cron expression.

A cron expression has 5 fields (minute first), or 6 fields with seconds first, as the old extensions
wrote it (`0 */5 * * * *`). Times are UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped]

_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Schedule:
    text: str
    interval: timedelta | None = None  # set for an interval; None for cron

    def next_after(self, moment: datetime) -> datetime:
        """The first run time strictly after `moment` (tz-aware)."""
        if self.interval is not None:
            return moment + self.interval
        fields = self.text.split()
        it = croniter(self.text, moment, second_at_beginning=len(fields) == 6)
        result: datetime = it.get_next(datetime)
        return result


def parse_schedule(text: str) -> Schedule:
    """A Schedule, or ValueError saying what a valid POLL_SCHEDULE looks like."""
    if match := _INTERVAL.match(text):
        seconds = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
        if seconds < 1:
            raise ValueError(f"interval {text!r} is shorter than 1 second")
        return Schedule(text.strip(), timedelta(seconds=seconds))
    fields = text.split()
    if len(fields) in (5, 6) and croniter.is_valid(" ".join(fields), second_at_beginning=len(fields) == 6):
        schedule = Schedule(" ".join(fields))
        try:  # valid fields may still match no date (30 February): refused here, not in the loop
            schedule.next_after(datetime.now(UTC))
        except CroniterBadDateError:
            raise ValueError(f"{text!r} never comes: no date matches it") from None
        return schedule
    raise ValueError(
        f"{text!r} is neither an interval (30s, 5m, 1h) nor a cron expression "
        "(5 fields, or 6 with seconds first, e.g. '*/5 * * * *')"
    )
