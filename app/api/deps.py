"""Shared route dependencies: the running context and token guards."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.context import Context
from app.errors import Unauthorized
from app.tokens import Scope


# Async so that FastAPI calls them on the event loop rather than on its thread pool.
async def get_context(request: Request) -> Context:
    context: Context = request.app.state.context
    return context


ContextDep = Annotated[Context, Depends(get_context)]


def authorize(context: Context, scope: Scope, authorization: str | None) -> None:
    """Refuse the request unless it carries a token of `scope` (raw or Bearer)."""
    if not context.tokens.allows(scope, authorization):
        raise Unauthorized(
            f"a valid {scope} token is required in the Authorization header",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require(scope: Scope) -> Any:
    """A dependency that accepts the request only with a token of `scope`."""

    async def check(request: Request, context: ContextDep) -> None:
        authorize(context, scope, request.headers.get("authorization"))

    return Depends(check)


ReadAuth = require("read")
AdminAuth = require("admin")
