"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from app.api.deps import ContextDep
from app.api.error_docs import error
from app.errors import Unavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: error("The database does not answer.")})
async def readyz(context: ContextDep) -> dict[str, str]:
    """The database answers."""
    try:
        async with context.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise Unavailable(f"the database does not answer: {type(exc).__name__}") from None
    return {"status": "ready"}


# HEAD too, as uptime checkers often probe with it (one operation each in the OpenAPI document).
for _path, _route in (("/healthz", healthz), ("/readyz", readyz)):
    router.add_api_route(_path, _route, methods=["HEAD"], include_in_schema=False)
