"""The pure retry policy: which outcomes retry, the backoff schedule, Retry-After, giving up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.retry import Outcome, RetryPolicy, excerpt, is_retryable, parse_retry_after, verdict_of
from tests.strategies import DETERMINISTIC

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (200, "delivered"),
        (201, "delivered"),
        (204, "delivered"),
        (299, "delivered"),
        (301, "retry"),
        (304, "retry"),
        (400, "dead"),
        (401, "dead"),
        (404, "dead"),
        (408, "retry"),
        (409, "retry"),
        (410, "dead"),
        (422, "dead"),
        (429, "retry"),
        (499, "dead"),
        (500, "retry"),
        (503, "retry"),
        (599, "retry"),
        (None, "retry"),
    ],
)
def test_verdicts(code: int | None, verdict: str) -> None:
    assert verdict_of(Outcome(code)) == verdict
    assert is_retryable(Outcome(code)) == (verdict == "retry") or verdict == "delivered"


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base=1.0, cap=60.0)
    assert [policy.backoff(n, rand=lambda: 0.0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [policy.backoff(n, rand=lambda: 1.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.backoff(10_000, rand=lambda: 1.0) == 60  # no overflow
    assert policy.backoff(0, rand=lambda: 1.0) == 1
    assert len({policy.backoff(5) for _ in range(50)}) > 1  # real jitter


def test_retry_after_is_a_floor_up_to_the_cap() -> None:
    policy = RetryPolicy(base=1.0, cap=600.0)
    assert policy.backoff(1, retry_after=120, rand=lambda: 0.0) == 120
    assert policy.backoff(8, retry_after=1, rand=lambda: 1.0) == 128
    assert policy.backoff(1, retry_after=86_400, rand=lambda: 0.0) == 600


def test_gives_up_on_attempts_or_age() -> None:
    policy = RetryPolicy(max_attempts=5, max_age=timedelta(days=3))
    assert not policy.gives_up(4, NOW - timedelta(days=2), NOW)
    assert policy.gives_up(5, NOW, NOW)
    assert policy.gives_up(1, NOW - timedelta(days=3), NOW)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Mon, 23 Nov 2026 12:01:30 GMT", 90.0),
        ("Mon, 23 Nov 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        ("\u00b2", None),  # str.isdigit() says yes; float() refuses it
        ("\u0661\u0662", None),  # Arabic-Indic 12: float() reads it, HTTP does not
        ("Mon, 23 Nov 2026 12:00:00 +99999999999999999999", None),  # OverflowError in the parser
        ("Mon, 23 Nov 99999999999999999999 12:00:00 GMT", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


_NUMBER = st.integers(min_value=0, max_value=10**25).map(str)
# Text that looks like a number or an HTTP date, with odd numbers in every field of the date.
_NUMBER_LIKE = st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=4)
_DATE_LIKE = st.builds(
    "{}, {} {} {} {}:{}:{} {}".format,
    st.sampled_from(["Mon", "Sun", "Xyz"]),
    _NUMBER,
    st.sampled_from(["Jan", "Nov", "Foo"]),
    _NUMBER,
    _NUMBER,
    _NUMBER,
    _NUMBER,
    st.sampled_from(["GMT", "UTC", "EST", "Z"]) | st.builds("{}{}".format, st.sampled_from("+-"), _NUMBER),
)


@DETERMINISTIC
@given(st.text() | _NUMBER_LIKE | _DATE_LIKE)
def test_parse_retry_after_never_raises(value: str) -> None:
    seconds = parse_retry_after(value, NOW)
    assert seconds is None or seconds >= 0


def test_excerpt_is_short_and_one_line() -> None:
    assert excerpt("a\n  b\tc") == "a b c"
    assert len(excerpt("x" * 10_000)) == 300
