"""Placeholder: the Management API poller lands with its issue."""

from __future__ import annotations

from app.config import Settings


async def run_poll_command(settings: Settings, *, once: bool) -> int:
    print("logrelay: the poller is not available yet", flush=True)
    return 2


async def run_poller_loop(context: object, stop: object) -> None:
    """Run poll passes on POLL_SCHEDULE until stopped (built with the poller issue)."""
    return None
