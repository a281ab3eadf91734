"""Settings: environment variables and an optional .env file. Nothing else reads os.environ."""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BeforeValidator,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from app.auth0.catalog import CATEGORIES, LOG_TYPES
from app.payloads import check_authorization_setting, check_headers_setting, check_signing_secret_setting

CommaList = Annotated[list[str], NoDecode]
_LEVEL_NAMES = ("debug", "info", "warning", "error", "critical")  # LOG_LEVEL 0-4
_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical"}
CommaSecrets = Annotated[list[SecretStr], NoDecode]
MIN_EVENT_RETENTION = timedelta(days=1)
# The longest duration any setting takes, "for ever" in practice: now - P1000000D is before year 1,
# and the OverflowError stopped every purge of the housekeeping run that computed it.
MAX_DURATION = timedelta(days=36500)
_TOO_LONG = "must be at most 100 years (P36500D)"
# The most MAX_BODY_BYTES (and MAX_EVENT_BYTES) may be, 1 GiB: a body is held in memory, several times
# over while it is parsed; and past 2**63, zlib's bound on inflating it overflowed (a 500 for gzip).
MAX_BODY_LIMIT = 1024**3


def _seconds(value: object) -> object:
    """A number of seconds given as text ("60"): pydantic reads only ISO 8601 durations from text.
    Trimmed either way, as every other setting is (" P2D " from a quoted .env line)."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value.strip()
    return value


_TIMEDELTA = TypeAdapter(timedelta)


def _seconds_or_iso(value: object) -> object:
    """A number of seconds from seconds ("10") or an ISO 8601 duration ("PT10S"), as every duration
    setting takes them, also those the code keeps as a plain number of seconds."""
    value = _seconds(value)
    if not isinstance(value, str):
        return value
    try:
        return _TIMEDELTA.validate_python(value.strip()).total_seconds()
    except ValidationError:
        raise ValueError("use seconds (10) or an ISO 8601 duration (PT10S)") from None


def _at_most_max_duration(value: timedelta) -> timedelta:
    if abs(value) > MAX_DURATION:
        raise ValueError(_TOO_LONG)
    return value


def _at_most_max_seconds(value: float) -> float:
    if abs(value) > MAX_DURATION.total_seconds():  # also "inf"
        raise ValueError(_TOO_LONG)
    return value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


LevelName = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)]
# A duration: seconds (60, "60") or ISO 8601 ("PT1M", "P3D").
Duration = Annotated[timedelta, BeforeValidator(_seconds), AfterValidator(_at_most_max_duration)]
# The same, kept as a number of seconds.
Seconds = Annotated[float, BeforeValidator(_seconds_or_iso), AfterValidator(_at_most_max_seconds)]


def split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")  # RFC 3986


def normalise_database_url(url: str) -> str:
    """Accept `sqlite:///x.db` and `postgresql://...` as people type them; pick the async driver.
    Read here as the engine will read it, so that a typo is one line that names the setting, not a
    traceback at the first connection (nor, for `sqlite://x.db`, a folder named `sqlite+aiosqlite:`)."""
    scheme, sep, rest = url.partition("://")
    # What comes before "://" is quoted back only when it is a scheme: in `user:pw@host://...` it is not.
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ValueError("must look like sqlite:///path/to.db or postgresql://user@host:5432/db")
    base = scheme.lower().split("+", 1)[0]
    if base == "sqlite":
        normalised = f"sqlite+aiosqlite://{rest}"
        _check_sqlite(normalised)
    elif base in ("postgresql", "postgres"):
        normalised = f"postgresql+asyncpg://{rest}"
        _check_postgresql(normalised)
    else:
        raise ValueError(f"unsupported database {scheme!r}: use sqlite:/// or postgresql://")
    return normalised


def _parse(text: str) -> URL:
    try:
        return make_url(text)
    except ValueError:  # int() of the port
        raise ValueError(_NOT_A_NUMBER) from None


def _check_connect_args(url: URL) -> Mapping[str, Any]:
    """The arguments the dialect will connect with, or ValueError saying why it cannot. Its messages
    name ports and parameters, never the password."""
    try:
        _, kwargs = url.get_dialect()().create_connect_args(url)
    except ValueError:  # int() or float() of a parameter, such as timeout=
        raise ValueError(_NOT_A_NUMBER) from None
    except ArgumentError as exc:
        raise ValueError(str(exc)) from None
    return kwargs


_NOT_A_NUMBER = (
    "a port or a parameter is not a number (host:5432); percent-encode any @ : / ? # in the user name "
    "or password (%40 for @)"
)


def _check_sqlite(text: str) -> None:
    url = _parse(text)
    if url.host or url.port or url.username or url.password or url.database is None:
        raise ValueError(
            "SQLite takes a file path after three slashes: sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    if url.database in ("", ":memory:") or url.query.get("mode") == "memory":
        raise ValueError("an in-memory SQLite database loses every event; give a file path")
    if url.database.endswith("/"):
        raise ValueError("give the path of the database file, not of a folder")
    if "uri" in url.query:  # the file SQLite would open is not the one made private, locked and backed up
        raise ValueError("give the file path itself, without uri=")
    _check_connect_args(url)


def _check_postgresql(text: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    url = _parse(text)
    kwargs = _check_connect_args(url)
    if url.host and "@" in url.host:
        raise ValueError("the host holds an @: percent-encode an @ in the user name or password as %40")
    ports = kwargs.get("port")
    for port in ports if isinstance(ports, list) else [ports]:
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port {port} is not a port (1-65535)")
    # The query's other parameters are asyncpg.connect()'s (ssl=require, command_timeout=60, ...), and
    # the engine's own prepared statement cache; an unknown one would fail every connection.
    known = set(inspect.signature(asyncpg.connect).parameters) | {"prepared_statement_cache_size"}
    known -= {"dsn", "loop", "connection_class", "record_class"}
    for name in url.query:
        if name == "sslmode":
            raise ValueError("sslmode is libpq's name; asyncpg's is ssl: ?ssl=require (or verify-full, ...)")
        if name not in known:
            raise ValueError(
                f"unknown parameter {name!r} in the query: it takes asyncpg.connect()'s, such as ssl, "
                "host (a socket folder) and command_timeout"
            )


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value may be a secret, and a ValidationError's text would show it.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, hide_input_in_errors=True
    )

    # --- service -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Path("data")
    database_url: str = ""
    service_log_level: LevelName = "info"
    run_workers: bool = True  # `serve` also runs the delivery and poller loops
    worker_port: int | None = Field(None, ge=1, le=65535)  # `worker` serves health and metrics on it
    # The longest one read of the query API may run before the database stops it; None: no limit.
    query_timeout: Seconds | None = Field(30.0, ge=0, le=86400)

    # --- tokens (generated, kept under data_dir and printed when unset) -------------------------
    log_stream_token: CommaSecrets = []
    api_token: CommaSecrets = []
    admin_token: CommaSecrets = []

    # --- receiver --------------------------------------------------------------------------------
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=MAX_BODY_LIMIT)
    max_event_bytes: int = Field(1024 * 1024, ge=256, le=MAX_BODY_LIMIT)
    # The most rows one transaction takes: a group commit, or a part of a larger body.
    commit_max_rows: int = Field(5000, ge=1)
    # Seconds one group commit may take on PostgreSQL before its requests get a 503 and its connection
    # is closed: a database host that went silent must not hold ingest (see README, PostgreSQL).
    commit_timeout: Seconds = Field(10.0, gt=0, le=300)

    # --- relay -----------------------------------------------------------------------------------
    forward_url: AnyHttpUrl | None = None
    forward_authorization: SecretStr | None = None
    forward_types: CommaList = ["failure"]
    forward_send_as_batch: bool = True
    forward_batch_size: int = Field(100, ge=1, le=1000)
    forward_concurrent_calls: int = Field(5, ge=1, le=100)
    forward_signing_secret: SecretStr | None = None
    forward_headers: SecretStr | None = None  # a JSON object of extra headers (values may be keys)
    # A replaced signing secret signs beside the new one this long (Standard Webhooks' rotation).
    signing_secret_grace: Duration = Field(timedelta(days=1), ge=timedelta(0), le=timedelta(days=30))
    slack_incoming_webhook_url: AnyHttpUrl | None = None
    delivery_timeout: Seconds = Field(10.0, gt=0)
    delivery_max_attempts: int = Field(100, ge=1)
    # 0 or less would send every row to dead letter unsent, as soon as it is queued.
    delivery_max_age: Duration = Field(timedelta(days=3), gt=timedelta(0))
    delivery_lease: Duration = Field(timedelta(seconds=60), gt=timedelta(0))
    delivery_poll_interval: Seconds = Field(1.0, gt=0)
    # Backoff after a destination fails: base * 2^(n-1) seconds with jitter, capped (relay).
    delivery_backoff_base: Seconds = Field(1.0, gt=0)
    delivery_backoff_max: Seconds = Field(3600.0, gt=0)
    # Delivered outbox rows are purged after this; 0 purges them at the next run.
    delivery_keep_delivered: Duration = Field(timedelta(days=7), ge=timedelta(0))

    # --- storage ---------------------------------------------------------------------------------
    # Events dated, and quarantined lines received, longer ago than this are purged; None: kept for ever.
    event_retention: Duration | None = None

    # --- poller (Auth0 Management API), with the old extensions' setting names --------------------
    auth0_domain: str | None = None
    auth0_client_id: str | None = None
    auth0_client_secret: SecretStr | None = None
    poll_schedule: str = "5m"
    poll_max_run_seconds: Seconds = Field(300.0, gt=0)
    # The webhook batch, as in the extensions (up to 1000); a logs request takes at most 100 of them.
    batch_size: int = Field(100, ge=1, le=1000)
    start_from: str | None = None
    log_retention_days: int = Field(30, ge=1, le=MAX_DURATION.days)
    lag_warn_share: float = Field(0.5, gt=0, le=1)
    webhook_url: AnyHttpUrl | None = None
    authorization: SecretStr | None = None
    send_as_batch: bool = True
    webhook_concurrent_calls: int = Field(5, ge=1, le=100)
    auth0_api_endpoints: CommaList = []
    log_types: CommaList = []
    log_level: int | None = Field(None, ge=0, le=4)
    slack_send_success: bool = False
    daily_report_time: int = Field(16, ge=0, le=23)
    # Which extension WEBHOOK_URL imitates: "management" (sapi/fapi, {date, request, response}) or
    # "authentication" (raw logs). Unset: AUTH0_API_ENDPOINTS picks the first, LOG_TYPES/LOG_LEVEL the
    # second; with none of them set it must be given, since the two extensions sent different logs.
    webhook_mode: Literal["management", "authentication"] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _trim(cls, value: object) -> object:
        # Every value is trimmed, whatever its type: a quoted .env line (KEY=" value ") keeps the spaces.
        return value.strip() if isinstance(value, str) else value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value:  # "" would bind every interface, and " " failed only at bind
            raise ValueError("must not be empty: give an address such as 127.0.0.1 (0.0.0.0 for all)")
        return value

    @field_validator("poll_schedule")
    @classmethod
    def _poll_schedule(cls, value: str) -> str:
        from app.schedule import parse_schedule

        too_long = f"an interval must be at most 100 years ({MAX_DURATION.days}d)"
        try:
            schedule = parse_schedule(value)
        except OverflowError:  # more seconds than a timedelta holds
            raise ValueError(too_long) from None
        if schedule.interval is not None and schedule.interval > MAX_DURATION:
            raise ValueError(too_long)
        return schedule.text

    @field_validator("auth0_domain")
    @classmethod
    def _auth0_domain(cls, value: str | None) -> str | None:
        from app.auth0.management import normalise_domain

        return normalise_domain(value) if value and value.strip() else None

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        # The extension's 0-4, or the names they stand for: LOG_LEVEL=info is common in containers.
        if isinstance(value, str):
            name = value.strip().lower()
            name = _LEVEL_ALIASES.get(name, name)
            if name in _LEVEL_NAMES:
                return _LEVEL_NAMES.index(name)
            if name and not name.isdigit():
                raise ValueError(f"use 0-4 or a level name: {', '.join(_LEVEL_NAMES)}")
        return None if value == "" else value

    @field_validator("worker_port", "event_retention", "query_timeout", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # WORKER_PORT= turns off a port an image or a .env file sets; EVENT_RETENTION= keeps for ever;
        # QUERY_TIMEOUT= lifts the limit.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("query_timeout")
    @classmethod
    def _query_timeout(cls, value: float | None) -> float | None:
        return value or None  # 0 lifts the limit too, as PostgreSQL's statement_timeout=0 does

    @field_validator("event_retention")
    @classmethod
    def _event_retention(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < MIN_EVENT_RETENTION:
            raise ValueError(
                "must be at least 1 day (P1D), or empty to keep events for ever: Auth0 redelivers and "
                "the poller re-reads recent logs, and an event purged sooner would come back as new"
            )
        return value

    @field_validator("start_from")
    @classmethod
    def _start_from(cls, value: str | None) -> str | None:
        from app.auth0.management import start_checkpoint

        if value is not None and value.strip():
            start_checkpoint(value)
            return value.strip()
        return None

    @model_validator(mode="after")
    def _poller(self) -> Settings:
        from app.extension import webhook_selection

        if self.auth0_domain and not (self.auth0_client_id and self.auth0_client_secret):
            raise ValueError("AUTH0_DOMAIN is set, so AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET are needed too")
        if self.webhook_url:
            webhook_selection(self)  # raises ValueError naming the settings that conflict
        return self

    _split = field_validator(
        "log_stream_token",
        "api_token",
        "admin_token",
        "forward_types",
        "auth0_api_endpoints",
        "log_types",
        mode="before",
    )(split_commas)
    _signing_secret = field_validator("forward_signing_secret")(check_signing_secret_setting)
    _authorization = field_validator("forward_authorization", "authorization")(check_authorization_setting)
    _headers = field_validator("forward_headers")(check_headers_setting)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalise_database_url(value) if value else value

    @field_validator("forward_types")
    @classmethod
    def _forward_types(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in CATEGORIES and v not in LOG_TYPES]
        if unknown:
            raise ValueError(f"unknown log type codes or categories: {', '.join(unknown)}")
        return value

    @model_validator(mode="after")
    def _lease(self) -> Settings:
        # A single-mode round sends up to SINGLE_ROUNDS requests one after another on each slot: a
        # lease that ends first lets another worker claim and send the same rows again.
        if self.delivery_lease.total_seconds() <= 4 * self.delivery_timeout:
            raise ValueError("DELIVERY_LEASE must be longer than 4 times DELIVERY_TIMEOUT")
        return self

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            # Built, not formatted: a DATA_DIR holding "%20" or "?" is a path, not URL syntax.
            url = URL.create("sqlite", database=str(self.data_dir / "logrelay.db"))
            self.database_url = normalise_database_url(url.render_as_string(hide_password=False))
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def poller_lag_limit(self) -> timedelta:
        """A checkpoint further behind than this is warned of: Auth0 deletes the logs soon after."""
        return timedelta(days=self.log_retention_days) * self.lag_warn_share

    @property
    def auth0_base_url(self) -> str | None:
        """AUTH0_DOMAIN is a bare domain (https implied) or a full base URL for tests and proxies."""
        if not self.auth0_domain:
            return None
        domain = self.auth0_domain
        return domain if "://" in domain else f"https://{domain}"


def misspelt_settings(names: Iterable[str]) -> list[tuple[str, str]]:
    """(name, the setting it resembles) for each name that is no setting but looks like one misspelt,
    such as FORWARD_URLS. Unknown names are otherwise ignored: the environment holds many others."""
    known = [name.upper() for name in Settings.model_fields]
    found = []
    for name in dict.fromkeys(n.upper() for n in names):
        if name not in known and (close := difflib.get_close_matches(name, known, n=1, cutoff=0.8)):
            found.append((name, close[0]))
    return found
