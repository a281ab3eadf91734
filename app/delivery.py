"""Delivery of outbox rows to destinations (built with the relay issue)."""

from __future__ import annotations

import asyncio

from app.context import Context


async def run_delivery_loop(context: Context, stop: asyncio.Event) -> None:
    """Claim due outbox rows and send them until `stop` is set."""
    await stop.wait()
