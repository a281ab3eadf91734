"""The old Auth0 webhook extensions' settings as one relay destination, so an old configuration
keeps working: WEBHOOK_URL, AUTHORIZATION, SEND_AS_BATCH, BATCH_SIZE, WEBHOOK_CONCURRENT_CALLS, and
either AUTH0_API_ENDPOINTS (Management API Webhooks) or LOG_TYPES/LOG_LEVEL (Authentication API Webhooks).

Two deliberate differences from the extensions:
- AUTH0_API_ENDPOINTS names match a path exactly or below it (`users` matches /api/v2/users and
  /api/v2/users/x, not /api/v2/users-by-email); the extension's substring test also matched those.
  Names are trimmed, so `users, connections` works.
- LOG_TYPES and LOG_LEVEL narrow together (their intersection); the extension took their union.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from app.auth0.catalog import LOG_TYPES, codes_at_level
from app.destinations import DestinationSpec

if TYPE_CHECKING:
    from app.config import Settings

Mode = Literal["management", "authentication"]
DESTINATION_NAME = "auth0-webhook-extension"
MANAGEMENT_TYPES = ("sapi", "fapi")


@dataclass(frozen=True, slots=True)
class WebhookSelection:
    mode: Mode
    types: tuple[str, ...]  # empty: every type
    api_endpoints: tuple[str, ...] | None


def webhook_selection(settings: Settings) -> WebhookSelection:
    """The mode and the logs WEBHOOK_URL receives; ValueError naming the settings when they conflict."""
    endpoints = tuple(e.strip().strip("/") for e in settings.auth0_api_endpoints if e.strip().strip("/"))
    by_type = bool(settings.log_types) or settings.log_level is not None
    mode = settings.webhook_mode
    if mode is None:
        if endpoints and by_type:
            raise ValueError(
                "AUTH0_API_ENDPOINTS (Management API Webhooks) and LOG_TYPES/LOG_LEVEL (Authentication API "
                "Webhooks) belong to different extensions; keep one, or set WEBHOOK_MODE"
            )
        if not endpoints and not by_type:
            raise ValueError(
                "WEBHOOK_URL is set but nothing says which extension it replaces: set WEBHOOK_MODE="
                "management (sapi/fapi logs as {date, request, response}) or WEBHOOK_MODE=authentication "
                "(raw logs of every type), or set AUTH0_API_ENDPOINTS or LOG_TYPES/LOG_LEVEL"
            )
        mode = "management" if endpoints else "authentication"
    if mode == "management":
        if by_type:
            raise ValueError("LOG_TYPES and LOG_LEVEL apply to WEBHOOK_MODE=authentication, not management")
        return WebhookSelection("management", MANAGEMENT_TYPES, endpoints or None)
    if endpoints:
        raise ValueError("AUTH0_API_ENDPOINTS applies to WEBHOOK_MODE=management, not authentication")
    return WebhookSelection("authentication", _auth_types(settings.log_types, settings.log_level), None)


def _auth_types(log_types: list[str], log_level: int | None) -> tuple[str, ...]:
    unknown = [t for t in log_types if t not in LOG_TYPES]
    if unknown:
        raise ValueError(f"LOG_TYPES has unknown log type codes: {', '.join(unknown)}")
    selected = set(log_types) if log_types else None
    if log_level is not None:
        at_level = codes_at_level(log_level)
        if selected is None:
            selected = set(at_level)
        else:
            selected &= at_level
            if not selected:
                raise ValueError(
                    f"LOG_TYPES and LOG_LEVEL={log_level} select no log type together (they narrow each "
                    "other: a type must be in LOG_TYPES and at that level or above); widen one of them"
                )
    return tuple(sorted(selected or ()))


def extension_destination_spec(settings: Settings) -> DestinationSpec | None:
    """WEBHOOK_URL, AUTHORIZATION, SEND_AS_BATCH, ... as one destination, or None when unset."""
    if settings.webhook_url is None:
        return None
    selection = webhook_selection(settings)
    return DestinationSpec(
        name=DESTINATION_NAME,
        url=str(settings.webhook_url),
        authorization=settings.authorization.get_secret_value() if settings.authorization else None,
        types=list(selection.types),
        categories=[],
        api_endpoints=list(selection.api_endpoints) if selection.api_endpoints else None,
        payload="mgmt_webhook" if selection.mode == "management" else "raw",
        send_as_batch=settings.send_as_batch,
        batch_size=settings.batch_size,
        concurrent_calls=settings.webhook_concurrent_calls,
    )
