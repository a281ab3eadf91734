"""Destinations: the relay targets. Validation, the admin operations, and the ones the environment
declares (FORWARD_*, SLACK_INCOMING_WEBHOOK_URL, and the old extensions' settings).

`authorization`, the signing secrets and the values of extra `headers` are write-only: they are
stored, sent, and never shown again (a header's name is shown); so are the credentials a URL may
carry (user:password@, query values, a Slack webhook's path).
A new signing secret does not cut the old one off: the old one goes on signing beside it for a grace
period (SIGNING_SECRET_GRACE), so that receivers can take the new one without rejecting requests.
Functions here take a connection and never commit; the caller owns the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator
from sqlalchemy import and_, case, delete, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app import outbox
from app.auth0.catalog import CATEGORIES, LOG_TYPES
from app.db import ENV_DESTINATIONS_LOCK, take_turns
from app.errors import Conflict, NotFound, Unprocessable
from app.models import Destination, UTCDateTime, utcnow
from app.payloads import check_header_value, check_headers, check_signing_secret, parse_headers

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

# Payload shapes a destination can ask for:
#   "event"         the stored event `data` with its `log_id` (object per request, array in batch mode)
#   "mgmt_webhook"  {date, request, response}, as the Management API Webhooks extension sent it
#   "raw"           the log exactly as stored, as the Authentication API Webhooks extension sent it
PAYLOADS = ("event", "mgmt_webhook", "raw")
KINDS = ("http", "slack")
# Fields that decide how requests are sent: changing one ends the destination's backoff.
DELIVERY_FIELDS = frozenset(
    {
        "url",
        "kind",
        "authorization",
        "headers",
        "signing_secret",
        "payload",
        "send_as_batch",
        "batch_size",
        "enabled",
    }
)

SECRET_COLUMNS = ("authorization", "signing_secret", "previous_signing_secret", "headers")
# Columns an API answer may show: everything but the secrets.
PUBLIC_COLUMNS = tuple(c for c in Destination.__table__.columns if c.name not in SECRET_COLUMNS)
# What a destination's row is read with to be shown: the secrets only as flags and header names.
_SHOWN = (
    *PUBLIC_COLUMNS,
    Destination.authorization.is_not(None).label("has_authorization"),
    Destination.signing_secret.is_not(None).label("has_signing_secret"),
    Destination.headers,
)


@dataclass
class DestinationSpec:
    """A destination described by the environment; upserted by name at start-up (origin="env")."""

    name: str
    url: str
    kind: str = "http"
    authorization: str | None = None
    headers: dict[str, str] | None = None
    signing_secret: str | None = None
    types: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=lambda: ["failure"])
    api_endpoints: list[str] | None = None
    payload: str = "event"
    send_as_batch: bool = True
    batch_size: int = 100
    concurrent_calls: int = 5
    enabled: bool = True

    def __post_init__(self) -> None:
        """The checks the API makes, so that a setting can never queue rows that cannot be sent."""
        checks: dict[str, Callable[[Any], Any]] = {
            "url": check_url,
            "authorization": check_authorization,
            "headers": check_headers,
            "signing_secret": lambda v: v if v is None else check_signing_secret(v),
        }
        for name, check in checks.items():
            try:
                setattr(self, name, check(getattr(self, name)))
            except ValueError as exc:
                raise ValueError(f"destination {self.name!r}, {name}: {exc}") from None


def is_storable(text: str) -> bool:
    """Text that both databases store: PostgreSQL refuses NUL, and a lone surrogate is no UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def check_url(url: str) -> str:
    """An http(s) URL that httpx can send to, or ValueError (without quoting it: it may hold a token)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ValueError(
            "is not a URL that can be sent to (check the host, the port and the characters)"
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError("the port must be between 1 and 65535")
    return url


def check_authorization(value: str | None) -> str | None:
    """An Authorization value sent verbatim; an empty one means none."""
    return check_header_value(value) if value else None


def split_types(values: list[str]) -> tuple[list[str], list[str]]:
    """FORWARD_TYPES mixes codes and categories: split them (unknown names are refused)."""
    unknown = [v for v in values if v not in CATEGORIES and v not in LOG_TYPES]
    if unknown:
        raise ValueError(f"unknown log type codes or categories: {', '.join(unknown)}")
    return [v for v in values if v in LOG_TYPES], [v for v in values if v in CATEGORIES]


def _not_null(schema: dict[str, JsonValue]) -> None:
    """The schema of a PATCH field that may be left out but not set to null: without the null
    (branch and default) that its `X | None`, which tells "left out" from a value, brings."""
    branches = schema.pop("anyOf")
    schema.pop("default", None)
    assert isinstance(branches, list)
    (value,) = (branch for branch in branches if branch != {"type": "null"})
    assert isinstance(value, dict)
    schema.update(value)


class DestinationPatch(BaseModel):
    """Fields of a destination; every one optional (PATCH). Secrets: null clears, absent keeps."""

    # A misspelt field ("signing_secrets") is an error: ignored, it would look like a change made.
    model_config = ConfigDict(extra="forbid")

    # Fields no destination can be without (NOT_NULL, refused by name when null) say so: _not_null.
    name: str | None = Field(None, min_length=1, max_length=200, json_schema_extra=_not_null)
    url: str | None = Field(None, json_schema_extra=_not_null)
    kind: Literal["http", "slack"] | None = Field(None, json_schema_extra=_not_null)
    authorization: str | None = None
    headers: dict[str, str] | None = None  # replaces every extra header; {} or null: none
    signing_secret: str | None = None
    types: list[str] | None = None
    categories: list[str] | None = None
    api_endpoints: list[str] | None = None
    payload: Literal["event", "mgmt_webhook", "raw"] | None = Field(None, json_schema_extra=_not_null)
    send_as_batch: bool | None = Field(None, json_schema_extra=_not_null)
    batch_size: int | None = Field(None, ge=1, le=1000, json_schema_extra=_not_null)
    concurrent_calls: int | None = Field(None, ge=1, le=100, json_schema_extra=_not_null)
    enabled: bool | None = Field(None, json_schema_extra=_not_null)
    # Not a column: how long the secret that `signing_secret` replaces goes on signing beside it
    # (default SIGNING_SECRET_GRACE). 0 ends an overlap at once, as after a leak.
    signing_secret_grace: timedelta | None = Field(None, ge=timedelta(0), le=timedelta(days=30))

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: object) -> object:
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not is_storable(text):
                raise ValueError("must not contain a NUL character or a lone surrogate")
        return value

    _url = field_validator("url")(lambda v: v if v is None else check_url(v))
    _authorization = field_validator("authorization")(check_authorization)
    _headers = field_validator("headers")(check_headers)
    _secret = field_validator("signing_secret")(lambda v: v if v is None else check_signing_secret(v))

    @field_validator("types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        unknown = [v for v in value or () if v not in LOG_TYPES]
        if unknown:
            raise ValueError(f"unknown log type codes: {', '.join(unknown)}")
        return value

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: list[str] | None) -> list[str] | None:
        unknown = [v for v in value or () if v not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories: {', '.join(unknown)} (use {', '.join(CATEGORIES)})")
        return value

    @model_validator(mode="after")
    def _grace_needs_secret(self) -> DestinationPatch:
        if self.signing_secret_grace is not None and "signing_secret" not in self.model_fields_set:
            raise ValueError("signing_secret_grace is given only with the signing_secret it rotates to")
        return self


class DestinationCreate(DestinationPatch):
    """A new destination. With neither types nor categories it takes failures, like FORWARD_TYPES."""

    name: str = Field(min_length=1, max_length=200)
    url: str
    kind: Literal["http", "slack"] = "http"
    payload: Literal["event", "mgmt_webhook", "raw"] = "event"
    send_as_batch: bool = True
    batch_size: int = Field(100, ge=1, le=1000)
    concurrent_calls: int = Field(5, ge=1, le=100)
    enabled: bool = True


# PATCH fields that may not be null (null types or categories mean none).
NOT_NULL = tuple(
    c.name
    for c in Destination.__table__.columns
    if not c.nullable and c.name in DestinationPatch.model_fields and c.name not in ("types", "categories")
)


def rotate_to(secret: str | None, now: datetime, grace: timedelta) -> dict[str, Any]:
    """UPDATE values that make `secret` the signing secret, in one statement whatever the row holds.

    A different secret replaces the current one, which goes on signing beside it until `now + grace`.
    The same secret again changes nothing (a start-up re-applying FORWARD_SIGNING_SECRET). None, or
    a grace of 0, ends any overlap at once. SET expressions read the row as it was before the UPDATE.
    """
    if secret is None or grace <= timedelta(0):
        return {"signing_secret": secret, "previous_signing_secret": None, "previous_secret_expires_at": None}
    replaced = and_(Destination.signing_secret.is_not(None), Destination.signing_secret != secret)
    until = literal(now + grace, UTCDateTime())
    return {
        "signing_secret": secret,
        "previous_signing_secret": case(
            (replaced, Destination.signing_secret), else_=Destination.previous_signing_secret
        ),
        "previous_secret_expires_at": case((replaced, until), else_=Destination.previous_secret_expires_at),
    }


async def forget_expired_secrets(conn: AsyncConnection, now: datetime) -> None:
    """Drop rotated-out secrets whose grace is over: a secret is kept no longer than it is used."""
    await conn.execute(
        update(Destination)
        .where(Destination.previous_secret_expires_at <= now)
        .values(previous_signing_secret=None, previous_secret_expires_at=None)
    )


def env_destination_specs(settings: Settings) -> list[DestinationSpec]:
    """FORWARD_* as the destination "forward" and SLACK_INCOMING_WEBHOOK_URL as "slack" (failures)."""
    specs: list[DestinationSpec] = []
    if settings.forward_url:
        types, categories = split_types(settings.forward_types)
        secret = settings.forward_signing_secret
        auth = settings.forward_authorization
        headers = settings.forward_headers
        specs.append(
            DestinationSpec(
                name="forward",
                url=str(settings.forward_url),
                authorization=auth.get_secret_value() if auth else None,
                headers=parse_headers(headers.get_secret_value()) if headers else None,
                signing_secret=secret.get_secret_value() if secret else None,
                types=types,
                categories=categories,
                send_as_batch=settings.forward_send_as_batch,
                batch_size=settings.forward_batch_size,
                concurrent_calls=settings.forward_concurrent_calls,
            )
        )
    if settings.slack_incoming_webhook_url:
        specs.append(
            DestinationSpec(name="slack", url=str(settings.slack_incoming_webhook_url), kind="slack")
        )
    return specs


async def sync_env_destinations(
    conn: AsyncConnection, specs: list[DestinationSpec], grace: timedelta
) -> None:
    """Create or update each spec by name, in the caller's transaction.

    An env destination whose variable was removed is disabled, not deleted: its delivery history
    stays readable and its pending rows wait (setting the variable again resumes them).
    """
    await take_turns(conn, ENV_DESTINATIONS_LOCK)  # replicas starting together: one inserts, the rest update
    delivery = [getattr(Destination, name) for name in sorted(DELIVERY_FIELDS)]
    query = select(Destination.id, Destination.name, Destination.origin, *delivery)
    existing = {row.name: row for row in await conn.execute(query)}
    now = utcnow()
    for spec in specs:
        values = asdict(spec) | {"origin": "env", "updated_at": now}
        old = existing.get(spec.name)
        if old is None:
            await conn.execute(insert(Destination).values(**values, created_at=now))
            continue
        if old.origin != "env":
            log.warning("the environment takes over destination %r, created through the API", spec.name)
        rotation = rotate_to(spec.signing_secret, now, grace)
        await conn.execute(update(Destination).where(Destination.id == old.id).values(values | rotation))
        if any(getattr(old, name) != values[name] for name in DELIVERY_FIELDS):
            await outbox.reset_backoff(conn, old.id)
    names = [spec.name for spec in specs]
    await conn.execute(
        update(Destination)
        .where(Destination.origin == "env", Destination.name.not_in(names), Destination.enabled.is_(True))
        .values(enabled=False, updated_at=now)
    )


async def list_destinations(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(select(*_SHOWN).order_by(Destination.id))
    return [_shown(row._mapping) for row in rows]


async def get_destination(conn: AsyncConnection, destination_id: int) -> dict[str, Any]:
    row = (await conn.execute(select(*_SHOWN).where(Destination.id == destination_id))).first()
    if row is None:
        raise NotFound(f"no destination with id {destination_id}")
    return _shown(row._mapping)


async def create_destination(conn: AsyncConnection, fields: DestinationCreate) -> int:
    values = fields.model_dump(exclude={"signing_secret_grace"})
    if not values["types"] and not values["categories"]:
        values["categories"] = ["failure"]
    values["types"] = values["types"] or []
    values["categories"] = values["categories"] or []
    now = utcnow()
    try:
        async with conn.begin_nested():
            result = await conn.execute(
                insert(Destination)
                .values(**values, origin="api", created_at=now, updated_at=now)
                .returning(Destination.id)
            )
    except IntegrityError:
        raise Conflict(f"a destination named {fields.name!r} exists") from None
    return int(result.scalar_one())


async def update_destination(
    conn: AsyncConnection, destination_id: int, fields: DestinationPatch, grace: timedelta
) -> None:
    """Apply the fields that were sent. An env destination may be edited; the next start-up
    re-applies its variables. A new signing secret is a rotation (`rotate_to`), the old one
    signing beside it for `grace` unless the request gives its own.

    A change to how requests are sent (DELIVERY_FIELDS) is taken as a fix: the destination's backoff
    ends and its failed rows are due at once.
    """
    values = fields.model_dump(exclude_unset=True)
    own_grace = values.pop("signing_secret_grace", None)
    for key in ("types", "categories"):
        if key in values and values[key] is None:
            values[key] = []
    nulls = [key for key in NOT_NULL if key in values and values[key] is None]
    if nulls:
        raise Unprocessable([{"parameter": key, "message": "may not be null"} for key in nulls])
    if not values:
        await get_destination(conn, destination_id)
        return
    now = utcnow()
    if "signing_secret" in values:
        values |= rotate_to(values["signing_secret"], now, grace if own_grace is None else own_grace)
    try:
        async with conn.begin_nested():
            result = await conn.execute(
                update(Destination)
                .where(Destination.id == destination_id)
                .values(**values, updated_at=now)
                .returning(Destination.id)
            )
            found = result.first()
    except IntegrityError:
        raise Conflict(f"a destination named {values.get('name')!r} exists") from None
    if found is None:
        raise NotFound(f"no destination with id {destination_id}")
    if DELIVERY_FIELDS.intersection(values):
        await outbox.reset_backoff(conn, destination_id)


async def delete_destination(conn: AsyncConnection, destination_id: int) -> None:
    """Delete a destination and its outbox rows (ON DELETE CASCADE)."""
    result = await conn.execute(
        delete(Destination).where(Destination.id == destination_id).returning(Destination.id)
    )
    if result.first() is None:
        raise NotFound(f"no destination with id {destination_id}")


def _shown(row: Any) -> dict[str, Any]:
    """A destination as the API shows it: its URL masked by `shown_url`, its extra headers by name."""
    destination = dict(row)
    destination["url"] = shown_url(destination["url"], destination["kind"])
    destination["header_names"] = list(destination.pop("headers") or ())
    return destination


def path_is_token(kind: str, host: str | None) -> bool:
    """Whether a destination's URL path is a secret: a Slack incoming webhook's path is its token."""
    return kind == "slack" or (host or "").lower() == "hooks.slack.com"


def shown_url(url: str, kind: str) -> str:
    """A URL without the credentials it may carry: user:password@ and query values become `***`, and
    a Slack incoming-webhook URL (its path is Slack's token) shows only its scheme and host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    _, at, host = parts.netloc.rpartition("@")
    netloc = f"***@{host}" if at else host
    if path_is_token(kind, parts.hostname):
        return f"{parts.scheme}://{netloc}/…"
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    if parts.query:
        pairs = (pair.partition("=") for pair in parts.query.split("&"))
        shown += "?" + "&".join(f"{key}=***" if sep else "***" for key, sep, _ in pairs)
    if parts.fragment:
        shown += "#***"
    return shown
