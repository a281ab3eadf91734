"""Destinations: the relay targets. (Skeleton: the relay issue fills it in; the contract below is fixed.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection

from app.config import Settings

# Payload shapes a destination can ask for:
#   "event"         the stored event `data` with its `log_id` (object per request, array in batch mode)
#   "mgmt_webhook"  {date, request, response}, as the Management API Webhooks extension sent it
#   "raw"           the log exactly as stored, as the Authentication API Webhooks extension sent it
PAYLOADS = ("event", "mgmt_webhook", "raw")


@dataclass
class DestinationSpec:
    """A destination described by the environment; upserted by name at start-up (origin="env")."""

    name: str
    url: str
    kind: str = "http"
    authorization: str | None = None
    signing_secret: str | None = None
    types: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=lambda: ["failure"])
    api_endpoints: list[str] | None = None
    payload: str = "event"
    send_as_batch: bool = True
    batch_size: int = 100
    concurrent_calls: int = 5
    enabled: bool = True


def env_destination_specs(settings: Settings) -> list[DestinationSpec]:
    """FORWARD_* and SLACK_INCOMING_WEBHOOK_URL as destinations (the relay issue)."""
    return []


async def sync_env_destinations(conn: AsyncConnection, specs: list[DestinationSpec]) -> None:
    """Create or update each spec by name, in the caller's transaction (the relay issue)."""
    return None
