"""How long the poller waits out the Management API's rate limit."""

from __future__ import annotations

from app.auth0 import management

MAX_RATE_WAIT = 60.0  # never trust a reset further away than this (clock skew); caps the backoff too
RATE_BACKOFF = 1.0  # seconds after a first 429 in a row, doubled for each further one
MAX_RETRY_AFTER = 3600.0  # a Retry-After is honoured up to this


def rate_limit_wait(limited: management.RateLimited, in_a_row: int, now: float) -> float:
    """Seconds to wait after the `in_a_row`-th 429 in a row: until the reset (a far one is clock
    skew), at least the Retry-After, and never less than the backoff 1, 2, 4 ... s, so that a reset
    already past (skew, another bucket) cannot make the poller ask again and again."""
    backoff = min(RATE_BACKOFF * 2.0 ** min(in_a_row - 1, 16), MAX_RATE_WAIT)
    reset_in = min(limited.reset_at - now, MAX_RATE_WAIT) if limited.reset_at is not None else 0.0
    return max(backoff, reset_in, min(limited.retry_after or 0.0, MAX_RETRY_AFTER))
