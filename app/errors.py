"""Expected failures carry their HTTP status; one set of handlers renders every error as JSON
`{"error": ..., "detail": ...}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from app.db import is_unavailable
from app.responses import JSONResponse

log = logging.getLogger(__name__)


class AppError(Exception):
    """An expected failure, shown to the client as it is."""

    status_code = 400
    error = "bad_request"

    def __init__(self, detail: Any, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class BadRequest(AppError):
    """The request or its body is malformed."""


class Unauthorized(AppError):
    """A missing or wrong token."""

    status_code = 401
    error = "unauthorized"


class Forbidden(AppError):
    """A valid token of another scope."""

    status_code = 403
    error = "forbidden"


class NotFound(AppError):
    status_code = 404
    error = "not_found"


class Conflict(AppError):
    status_code = 409
    error = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    error = "payload_too_large"


class UnsupportedMediaType(AppError):
    status_code = 415
    error = "unsupported_media_type"


class Unprocessable(AppError):
    status_code = 422
    error = "invalid_request"


class TooManyRequests(AppError):
    """A rate limit holds; Retry-After says how long."""

    status_code = 429
    error = "rate_limited"


class Unavailable(AppError):
    """The database is not answering; the sender should retry."""

    status_code = 503
    error = "unavailable"


class QueryTimeout(AppError):
    """A read ran past QUERY_TIMEOUT and the database stopped it; the same request would run as long
    again, so it is no 503 (retry later) but a 504 that asks for a narrower query."""

    status_code = 504
    error = "query_timeout"


def error_response(
    status: int, error: str, detail: Any, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def render_error(exc: Exception) -> JSONResponse:
    """The JSON answer for an AppError, a 503 while the database is unavailable, or a logged 500 for
    anything else."""
    if isinstance(exc, AppError):
        return error_response(exc.status_code, exc.error, exc.detail, exc.headers)
    if is_unavailable(exc):
        # By class name only: a driver's message may quote the statement.
        log.warning("database unavailable: %s", type(exc).__name__)
        detail = f"the database is not answering ({type(exc).__name__}); retry"
        return error_response(Unavailable.status_code, Unavailable.error, detail)
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")


async def _render(_: Request, exc: Exception) -> JSONResponse:
    return render_error(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_request", [_problem(e) for e in exc.errors()])


def _problem(error: Any) -> dict[str, str]:
    if error["type"] == "json_invalid":  # its loc is ("body", offset): no parameter to name but the body
        position = error["loc"][-1]
        return {
            "parameter": "body",
            "message": f"is not valid JSON: {error['ctx']['error']} at character {position}",
        }
    parameter = ".".join(str(p) for p in error["loc"] if p not in ("query", "body", "path"))
    return {"parameter": parameter or "body", "message": error["msg"]}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and exc.__cause__ is not None:
        # FastAPI's "There was an error parsing the body", raised from what it met reading a JSON
        # body; a 422 that names the body and says why, as for a JSON syntax error.
        problem = {"parameter": "body", "message": _unreadable(exc.__cause__)}
        return error_response(422, "invalid_request", [problem])
    error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return error_response(exc.status_code, error, exc.detail, headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method the path takes. Starlette's 405 names only those of the first route on the path,
    and /api/destinations has one route per method (RFC 9110: Allow lists them all)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    )


def _unreadable(cause: BaseException) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return "is not valid JSON: it is not UTF-8 text"
    if isinstance(cause, RecursionError):
        return "is nested too deeply"
    return "could not be read as JSON"


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _render)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    # Database errors by their own classes, so that a 503 is an answer like any other rather than a
    # server error that Starlette re-raises to the server's log.
    app.add_exception_handler(SQLAlchemyError, _render)
    app.add_exception_handler(OSError, _render)
    app.add_exception_handler(Exception, _render)
