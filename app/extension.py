"""The old Auth0 webhook extensions' settings as a relay destination (the poller issue fills it in)."""

from __future__ import annotations

from app.config import Settings
from app.destinations import DestinationSpec


def extension_destination_spec(settings: Settings) -> DestinationSpec | None:
    """WEBHOOK_URL, AUTHORIZATION, SEND_AS_BATCH, ... as one destination, or None when unset."""
    return None
