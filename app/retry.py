"""The retry policy for outbound deliveries. Pure: no I/O, no clock of its own (callers pass `now`)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal

from app.config import Settings

# 408 Request Timeout, 409 Conflict and 429 Too Many Requests say "try again later"; other 4xx never heal.
RETRYABLE_4XX = frozenset({408, 409, 429})
ERROR_EXCERPT_CHARS = 300

Verdict = Literal["delivered", "retry", "dead"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one POST came to: an HTTP status, or no answer at all (timeout, refused, reset), or a
    request that could not be sent at all (`permanent`: a bad URL or header value never heals)."""

    status_code: int | None
    error: str | None = None  # a short excerpt of the response body, or the transport error
    retry_after: float | None = None  # seconds the receiver asked us to wait
    permanent: bool = False

    @property
    def is_success(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def is_retryable(outcome: Outcome) -> bool:
    """No answer, 408/409/429, 5xx, and a 3xx (redirects are not followed; the URL may be fixed) retry."""
    code = outcome.status_code
    if code is None:
        return not outcome.permanent
    return code in RETRYABLE_4XX or not 400 <= code < 500


def verdict_of(outcome: Outcome) -> Verdict:
    if outcome.is_success:
        return "delivered"
    return "retry" if is_retryable(outcome) else "dead"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped, never shorter than a Retry-After up to the cap."""

    base: float = 1.0
    cap: float = 3600.0
    max_attempts: int = 100
    max_age: timedelta = timedelta(days=3)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            base=settings.delivery_backoff_base,
            cap=settings.delivery_backoff_max,
            max_attempts=settings.delivery_max_attempts,
            max_age=settings.delivery_max_age,
        )

    def backoff(
        self, failures: int, retry_after: float | None = None, rand: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait after `failures` consecutive failures (1 = the first): base * 2^(n-1),
        capped, times a jitter factor in [0.5, 1) so that replicas and destinations spread out."""
        exponent = min(max(failures, 1) - 1, 62)
        delay = min(self.cap, self.base * 2.0**exponent) * (0.5 + rand() / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        return delay

    def gives_up(self, attempts: int, created_at: datetime, now: datetime) -> bool:
        """True once a row has used its attempts or outlived the maximum age."""
        return attempts >= self.max_attempts or self.is_expired(created_at, now)

    def is_expired(self, created_at: datetime, now: datetime) -> bool:
        return now - created_at >= self.max_age


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable.

    Never raises: the receiver writes this header, and a value we cannot read must cost its events
    no more than no header would.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit() alone takes "²" (float() refuses) and "٣"
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year or offset of 20 digits
        return None
    if when.tzinfo is None:
        return None
    return max((when - now).total_seconds(), 0.0)


def excerpt(text: str, limit: int = ERROR_EXCERPT_CHARS) -> str:
    """A short, single-line piece of a response body for the operator (never the request)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
