"""Routes for the poller API (to be built with its issue)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["poller"])
