"""Shared route dependencies: the running context and token guards."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import Depends, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BeforeValidator
from sqlalchemy.ext.asyncio import AsyncConnection

from app import query_timeout
from app.context import Context
from app.errors import Forbidden, Unauthorized, Unprocessable
from app.tokens import SCOPES, SETTING_OF, Scope


# Async so that FastAPI calls them on the event loop rather than on its thread pool.
async def get_context(request: Request) -> Context:
    context: Context = request.app.state.context
    return context


ContextDep = Annotated[Context, Depends(get_context)]


def limited_read(
    context: Context, reader: query_timeout.Reader
) -> AbstractAsyncContextManager[AsyncConnection]:
    """A connection for one read of a route, which the database stops at QUERY_TIMEOUT: a 504
    `query_timeout` (see app.query_timeout). Document it with error_docs' QUERY_TIMED_OUT or
    READ_TIMED_OUT."""
    return query_timeout.reading(context.engine, reader, context.settings.query_timeout)


# Row ids as the columns hold them (destinations: 32-bit, outbox rows: 64-bit): a larger number is a
# 422 here, not an overflow in the driver.
MAX_DESTINATION_ID = 2**31 - 1
MAX_DELIVERY_ID = 2**63 - 1
DestinationId = Annotated[int, Path(ge=1, le=MAX_DESTINATION_ID)]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_DELIVERY_ID)]


_ISO_DATE = re.compile(r"\d{4}-")


def _iso_8601(value: object) -> object:
    # pydantic also reads a number as a Unix time: `since=20261101` (a date without its dashes) would
    # be 1970-08-23, and the answer would cover another range than the one asked without a word.
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date or date-time, such as 2026-11-01T00:00:00Z")
    return value


# A date or date-time parameter: ISO 8601 only.
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_8601)]


def utc_range(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """`since` and `until` parameters in UTC, the first before the second; one without an offset is
    taken as UTC, as Auth0 dates are."""
    since, until = _utc("since", since), _utc("until", until)
    if since and until and since >= until:
        raise Unprocessable([{"parameter": "until", "message": "must be later than since"}])
    return since, until


def _utc(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise Unprocessable([{"parameter": name, "message": "is out of the supported date range"}]) from None


def authorize(context: Context, scope: Scope, authorization: str | None) -> None:
    """Refuse the request unless it carries a token of `scope` (raw or Bearer): 401 without a valid
    token, 403 with a token of another scope, which names the token the route takes."""
    tokens = context.tokens
    if tokens.allows(scope, authorization):
        return
    needed = f"{SETTING_OF[scope]} or {SETTING_OF['admin']}" if scope == "read" else SETTING_OF[scope]
    if granted := tokens.scopes_of(authorization):
        held = " and ".join(SETTING_OF[s] for s in SCOPES if s in granted)
        raise Forbidden(f"this token is the {held}; this route takes the {needed}")
    raise Unauthorized(
        f"a valid {scope} token ({needed}) is required in the Authorization header",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require(scope: Scope) -> Any:
    """A dependency that accepts the request only with a token of `scope`."""

    async def check(request: Request, context: ContextDep) -> None:
        authorize(context, scope, request.headers.get("authorization"))

    return Depends(check)


ReadAuth = require("read")
AdminAuth = require("admin")


async def strict_query(request: Request) -> None:
    """Refuse a query parameter the route does not take, or a repeat of one that takes one value.

    Ignoring them would answer another question than the one asked: `?types=f` (a typo) would list
    every event, and `/export?limit=10` would stream the whole store.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    single, repeatable = _query_names(route)
    problems = []
    for name in dict.fromkeys(request.query_params.keys()):
        if name not in single and name not in repeatable:
            problems.append({"parameter": name, "message": "is not a parameter of this endpoint"})
        elif name in single and len(request.query_params.getlist(name)) > 1:
            problems.append({"parameter": name, "message": "may be given only once"})
    if problems:
        raise Unprocessable(problems)


StrictQuery = Depends(strict_query)


def _query_names(route: APIRoute) -> tuple[frozenset[str], frozenset[str]]:
    """The route's query parameters: those that take one value, and those that may repeat."""
    single: set[str] = set()
    repeatable: set[str] = set()
    for field in _query_fields(route.dependant):
        (repeatable if _is_sequence(field.field_info.annotation) else single).add(field.alias)
    return frozenset(single), frozenset(repeatable)


def _query_fields(dependant: Dependant) -> Iterator[Any]:
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from _query_fields(sub)


def _is_sequence(annotation: Any) -> bool:
    if get_origin(annotation) in (list, tuple, set, frozenset):
        return True
    return get_origin(annotation) in (Union, UnionType) and any(_is_sequence(a) for a in get_args(annotation))
