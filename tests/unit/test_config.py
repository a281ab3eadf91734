"""Settings validation: DATABASE_URL forms, comma-separated tokens, and errors that name the setting."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import Settings, misspelt_settings

ENV = (
    "DATABASE_URL",
    "LOG_STREAM_TOKEN",
    "API_TOKEN",
    "ADMIN_TOKEN",
    "PORT",
    "HOST",
    "MAX_BODY_BYTES",
    "DATA_DIR",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def error_fields(info: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {str(part) for e in info.value.errors() for part in e["loc"]}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite:////var/lib/logrelay/x.db", "sqlite+aiosqlite:////var/lib/logrelay/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://logrelay:pw@db:5432/logrelay", "postgresql+asyncpg://logrelay:pw@db:5432/logrelay"),
        ("postgres://logrelay@db/logrelay", "postgresql+asyncpg://logrelay@db/logrelay"),
        ("postgresql+asyncpg://u@h:5432/d", "postgresql+asyncpg://u@h:5432/d"),
        ("postgresql://u@h/d?ssl=require", "postgresql+asyncpg://u@h/d?ssl=require"),
        ("postgresql://u:p%40ss%2F@h:5432/d", "postgresql+asyncpg://u:p%40ss%2F@h:5432/d"),
        ("postgresql://u@/d?host=/run/postgresql", "postgresql+asyncpg://u@/d?host=/run/postgresql"),
        ("postgresql:///d", "postgresql+asyncpg:///d"),  # asyncpg: PGHOST, or the local socket
        ("postgresql://u@/d?host=a:5432&host=b:5433", "postgresql+asyncpg://u@/d?host=a:5432&host=b:5433"),
        ("postgresql://u@h/d?command_timeout=60", "postgresql+asyncpg://u@h/d?command_timeout=60"),
        ("sqlite:///x.db?timeout=5", "sqlite+aiosqlite:///x.db?timeout=5"),
        ("SQLite:///x.db", "sqlite+aiosqlite:///x.db"),  # a scheme is case-insensitive
        ("Postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_database_url_forms(given: str, expected: str) -> None:
    settings = make(database_url=given)
    assert settings.database_url == expected
    assert settings.is_sqlite is expected.startswith("sqlite")


@pytest.mark.parametrize(
    "url",
    [
        "mysql://x",
        "not a url",
        "oracle://u@h/d",
        "http://example.com",
        "sqlite",
        # In memory, every event would be lost at the first restart.
        "sqlite:///:memory:",
        "sqlite://",
        "sqlite:///file:x?mode=memory&uri=true",
        # Read as the engine reads them, these failed at the first connection with a traceback.
        "sqlite://logrelay.db",  # two slashes: a host, and a folder named "sqlite+aiosqlite:"
        "sqlite:////",
        "sqlite:///data/",
        "sqlite:///file:x.db?uri=true",
        "sqlite:///x.db?timeout=soon",
        "postgresql://u:secret-pw@h:abc/d",
        "postgresql://u:secret-pw@h:99999/d",
        "postgresql://u:secret-pw@h1:5432,h2:5432/d",
        "postgresql://u:secret@pw@h/d",  # an @ not percent-encoded
        "postgresql://u:secret-pw@h/d?sslmode=require",  # libpq's name; asyncpg's is ssl
        "postgresql://u:secret-pw@h/d?application=x",
        "postgresql://u:secret-pw@/d?host=a:5432&host=b",
        "u:secret-pw@h://d",  # before "://" is no scheme, and was quoted back
        "postgresql//u:secret-pw@h/d",
    ],
)
def test_bad_database_url_names_the_setting(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(database_url=url)
    assert "database_url" in error_fields(info)
    assert "secret" not in str(info.value)


def test_database_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    settings = make(data_dir=tmp_path / "here")
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'here' / 'logrelay.db'}"
    assert make().database_url == "sqlite+aiosqlite:///data/logrelay.db"


def test_database_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/d")
    assert make().database_url == "postgresql+asyncpg://u@h/d"
    monkeypatch.setenv("DATABASE_URL", "mysql://u@h/d")
    with pytest.raises(ValidationError) as info:
        make()
    assert "database_url" in error_fields(info)


@pytest.mark.parametrize(
    ("raw", "tokens"),
    [
        ("one", ["one"]),
        ("one,two", ["one", "two"]),
        (" one , two ,, three ,", ["one", "two", "three"]),
        ("", []),
    ],
)
def test_comma_separated_tokens(monkeypatch: pytest.MonkeyPatch, raw: str, tokens: list[str]) -> None:
    assert [t.get_secret_value() for t in make(log_stream_token=raw).log_stream_token] == tokens
    monkeypatch.setenv("LOG_STREAM_TOKEN", raw)
    monkeypatch.setenv("API_TOKEN", raw)
    settings = make()
    assert [t.get_secret_value() for t in settings.log_stream_token] == tokens
    assert [t.get_secret_value() for t in settings.api_token] == tokens


def test_tokens_never_show_in_repr() -> None:
    settings = make(log_stream_token="very-secret-a,very-secret-b", admin_token="very-secret-c")
    assert "very-secret" not in repr(settings)
    assert "very-secret" not in str(settings.model_dump())


def test_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LOG_STREAM_TOKEN=from-dotenv,second\nPORT=9123\nMAX_BODY_BYTES=4096\n")
    settings = Settings()
    assert [t.get_secret_value() for t in settings.log_stream_token] == ["from-dotenv", "second"]
    assert (settings.port, settings.max_body_bytes) == (9123, 4096)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "notanumber"),
        ("PORT", "0"),
        ("PORT", "70000"),
        ("MAX_BODY_BYTES", "10"),
        ("MAX_BODY_BYTES", "big"),
        ("DATABASE_URL", "mysql://x"),
        ("FORWARD_SIGNING_SECRET", "short-secret"),
        ("FORWARD_AUTHORIZATION", "Bearer sk_live_SECRET\x7f"),
        ("AUTHORIZATION", "Basic abc\r\nX-Injected: 1"),
        ("HOST", ""),  # "" would bind every interface
        ("HOST", "  "),  # and blank failed only at bind
        ("LOG_LEVEL", "loud"),
        ("SERVICE_LOG_LEVEL", "verbose"),
        ("DELIVERY_MAX_AGE", "soon"),
        ("DELIVERY_TIMEOUT", "soon"),
        ("COMMIT_TIMEOUT", "0"),
        ("COMMIT_TIMEOUT", "PT10M"),  # a commit that long would hold Auth0's requests for as long
        ("POLL_MAX_RUN_SECONDS", "P"),
        ("SIGNING_SECRET_GRACE", "P31D"),
        ("SIGNING_SECRET_GRACE", "-1"),
        ("WORKER_PORT", "0"),
        ("WORKER_PORT", "metrics"),
        # Longer than 100 years: now - P1000000D is before year 1, and the purges that computed it failed.
        ("DELIVERY_KEEP_DELIVERED", "P1000000D"),
        ("EVENT_RETENTION", "P36501D"),
        ("DELIVERY_MAX_AGE", "-P1000000D"),
        ("DELIVERY_LEASE", "P1000000D"),
        ("DELIVERY_BACKOFF_MAX", "inf"),
        ("DELIVERY_POLL_INTERVAL", "1e12"),
        ("POLL_MAX_RUN_SECONDS", "P1000000D"),
        ("POLL_SCHEDULE", "36501d"),
        ("POLL_SCHEDULE", "99999999999d"),  # an OverflowError in parsing, not a ValueError
        ("LOG_RETENTION_DAYS", "1000000"),
        # Every row would be dead unsent as soon as it is queued, or every delivered row purged at once.
        ("DELIVERY_MAX_AGE", "0"),
        ("DELIVERY_MAX_AGE", "PT0S"),
        ("DELIVERY_MAX_AGE", "-60"),
        ("DELIVERY_KEEP_DELIVERED", "-1"),
        ("DELIVERY_KEEP_DELIVERED", "-P1D"),
        ("DELIVERY_LEASE", "-P1D"),
        # Past 2**63 bytes, zlib's bound on inflating a gzip body overflowed: a 500 for each.
        ("MAX_BODY_BYTES", str(2**63)),
        ("MAX_BODY_BYTES", str(1024**3 + 1)),
        ("MAX_EVENT_BYTES", str(2**63)),
        ("MAX_EVENT_BYTES", "255"),
        ("COMMIT_MAX_ROWS", "0"),
        ("DELIVERY_MAX_ATTEMPTS", "0"),
        ("DELIVERY_TIMEOUT", "0"),
        ("DELIVERY_POLL_INTERVAL", "-1"),
        ("DELIVERY_BACKOFF_BASE", "0"),
        ("POLL_MAX_RUN_SECONDS", "0"),
        ("FORWARD_CONCURRENT_CALLS", "0"),
        ("WEBHOOK_CONCURRENT_CALLS", "101"),
        ("FORWARD_BATCH_SIZE", "0"),
        ("BATCH_SIZE", "1001"),
        ("LAG_WARN_SHARE", "0"),
        ("LAG_WARN_SHARE", "nan"),
        ("DELIVERY_TIMEOUT", "nan"),
        ("DAILY_REPORT_TIME", "24"),
        ("LOG_RETENTION_DAYS", "0"),
    ],
)
def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        make()
    assert name.lower() in error_fields(info)
    if "SECRET" in name or "AUTHORIZATION" in name:  # the message names it, never shows it
        assert all(value.strip() not in str(e["msg"]) for e in info.value.errors())


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("HOST", " 0.0.0.0 ", "0.0.0.0"),
        ("DATABASE_URL", " sqlite:///x.db\n", "sqlite+aiosqlite:///x.db"),
        ("RUN_WORKERS", " false ", False),
        ("FORWARD_SEND_AS_BATCH", "\tfalse ", False),
        ("WEBHOOK_MODE", " management ", "management"),
        ("DATA_DIR", " /var/lib/logrelay ", Path("/var/lib/logrelay")),
        ("AUTH0_CLIENT_ID", " client-id ", "client-id"),
        ("FORWARD_TYPES", " failure , pwd_leak ", ["failure", "pwd_leak"]),
        ("PORT", " 8001 ", 8001),
    ],
)
def test_every_value_is_trimmed(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: object
) -> None:
    """As the README says of settings: a quoted .env line (KEY=" value ") keeps its spaces."""
    monkeypatch.setenv(name, value)
    assert getattr(make(), name.lower()) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FORWARD_AUTHORIZATION", "Bearer abc"),
        ("AUTH0_CLIENT_SECRET", "client-secret"),
        ("FORWARD_SIGNING_SECRET", "a-signing-secret-of-32-characters"),
    ],
)
def test_secrets_are_trimmed_too(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, f" {value}\n")
    secret = getattr(make(), name.lower())
    assert secret.get_secret_value() == value


@pytest.mark.parametrize(("value", "port"), [("9100", 9100), ("", None), (" ", None)])
def test_an_empty_worker_port_turns_the_port_off(
    monkeypatch: pytest.MonkeyPatch, value: str, port: int | None
) -> None:
    """As an image that sets WORKER_PORT needs, for a worker that shares the network with serve."""
    monkeypatch.setenv("WORKER_PORT", value)
    assert make().worker_port == port


def test_defaults() -> None:
    settings = make()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.max_body_bytes == 16 * 1024 * 1024
    assert settings.commit_timeout == 10.0
    assert settings.log_stream_token == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90", timedelta(seconds=90)),
        (" 2.5 ", timedelta(seconds=2.5)),
        ("PT90S", timedelta(seconds=90)),
        ("P3D", timedelta(days=3)),
        (" P3D ", timedelta(days=3)),  # trimmed, as the seconds are
    ],
)
def test_durations_take_seconds_or_iso_8601(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: timedelta
) -> None:
    for name in ("DELIVERY_MAX_AGE", "DELIVERY_KEEP_DELIVERED", "SIGNING_SECRET_GRACE"):
        monkeypatch.setenv(name, value)
    settings = make()
    assert settings.delivery_max_age == settings.delivery_keep_delivered == expected
    assert settings.signing_secret_grace == expected
    monkeypatch.setenv("DELIVERY_LEASE", "120")
    assert make().delivery_lease == timedelta(seconds=120)


def test_zero_keeps_no_delivered_row_and_no_replaced_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_KEEP_DELIVERED", "0")
    monkeypatch.setenv("SIGNING_SECRET_GRACE", "PT0S")
    settings = make()
    assert settings.delivery_keep_delivered == settings.signing_secret_grace == timedelta(0)


@pytest.mark.parametrize(
    ("value", "expected"), [("12", 12.0), (" 2.5 ", 2.5), ("PT12S", 12.0), ("PT1M", 60.0)]
)
def test_settings_kept_as_seconds_take_iso_8601_too(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: float
) -> None:
    names = ("DELIVERY_TIMEOUT", "DELIVERY_POLL_INTERVAL", "DELIVERY_BACKOFF_BASE", "DELIVERY_BACKOFF_MAX")
    for name in (*names, "POLL_MAX_RUN_SECONDS", "COMMIT_TIMEOUT"):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DELIVERY_LEASE", "P1D")
    settings = make()
    assert settings.delivery_timeout == settings.delivery_poll_interval == expected
    assert settings.delivery_backoff_base == settings.delivery_backoff_max == expected
    assert settings.poll_max_run_seconds == settings.commit_timeout == expected


def test_level_names_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_LOG_LEVEL", "INFO")
    monkeypatch.setenv("LOG_LEVEL", "Warn")
    settings = make()
    assert (settings.service_log_level, settings.log_level) == ("info", 2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        (" ", None),
        ("P1D", timedelta(days=1)),
        ("86400", timedelta(days=1)),
        ("P30D", timedelta(days=30)),
        (" P30D ", timedelta(days=30)),
    ],
)
def test_event_retention_is_unset_or_a_duration(value: str | None, expected: timedelta | None) -> None:
    assert make(event_retention=value).event_retention == expected


@pytest.mark.parametrize("value", ["PT23H59M59S", "86399", "0", "-1", "PT0S", "soon"])
def test_an_event_retention_under_a_day_or_not_a_duration_is_refused(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(event_retention=value)
    assert error_fields(info) == {"event_retention"}
    if value != "soon":
        assert "must be at least 1 day (P1D)" in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 30.0), ("10", 10.0), ("0.25", 0.25), ("PT1M", 60.0), ("0", None), ("PT0S", None), ("", None)],
)
def test_query_timeout_is_a_duration_and_0_or_empty_lifts_it(
    value: str | None, expected: float | None
) -> None:
    settings = make() if value is None else make(query_timeout=value)
    assert settings.query_timeout == expected


@pytest.mark.parametrize("value", ["-1", "86401", "soon"])
def test_a_negative_huge_or_unreadable_query_timeout_is_refused(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(query_timeout=value)
    assert error_fields(info) == {"query_timeout"}


def test_a_lease_shorter_than_a_round_is_refused() -> None:
    # A single-mode round may send 4 requests one after another on a slot, each up to the timeout.
    with pytest.raises(ValidationError, match="DELIVERY_LEASE must be longer than 4 times DELIVERY_TIMEOUT"):
        make(delivery_lease=40, delivery_timeout=10)
    assert make(delivery_lease=41, delivery_timeout=10).delivery_lease == timedelta(seconds=41)


def test_misspelt_settings_are_told_from_unrelated_names() -> None:
    names = ["FORWARD_URLS", "api_tokens", "DATABASE_URI", "POLL_SCHEDULES", "PORT", "HOSTNAME", "PATH"]
    names += ["HOME", "DATA_DIRECTORY", "WEB_CONCURRENCY", "POSTGRES_URL", "LOG_STREAM_TOKEN", "FORWARD_URLS"]
    assert misspelt_settings(names) == [
        ("FORWARD_URLS", "FORWARD_URL"),
        ("API_TOKENS", "API_TOKEN"),
        ("DATABASE_URI", "DATABASE_URL"),
        ("POLL_SCHEDULES", "POLL_SCHEDULE"),
    ]
