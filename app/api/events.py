"""Routes for the events API (to be built with its issue)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["events"])
