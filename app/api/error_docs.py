"""Error answers as the OpenAPI document describes them: every error is `{"error", "detail"}`.

Each router lists the statuses its routes give. A route that lists 422 also keeps FastAPI from
documenting its own validation error (`loc`, `msg`, `type`), which logrelay never sends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Responses = dict[int | str, dict[str, Any]]


class ErrorBody(BaseModel):
    error: str = Field(examples=["invalid_request"])
    detail: Any = Field(
        examples=[[{"parameter": "limit", "message": "Input should be less than or equal to 1000"}]]
    )


def error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


INVALID: Responses = {
    422: error(
        "A parameter out of range or of the wrong form, or one the route does not take; `detail` names it."
    )
}
READ_ERRORS: Responses = {
    401: error("No valid read token (API_TOKEN or ADMIN_TOKEN) as a Bearer token."),
    403: error("A valid token of another scope (LOG_STREAM_TOKEN)."),
    **INVALID,
}
ADMIN_ERRORS: Responses = {
    401: error("No valid ADMIN_TOKEN as a Bearer token."),
    403: error("A valid token of another scope (API_TOKEN or LOG_STREAM_TOKEN)."),
    **INVALID,
}
NO_DESTINATION: Responses = {404: error("No destination with this id.")}
TOO_LARGE: Responses = {413: error("The request body is larger than 1 MiB.")}
# A read stopped at QUERY_TIMEOUT (app.query_timeout): the query API's, which a narrower query avoids,
# and the admin API's, which a stalled database or a lock held too long causes.
QUERY_TIMED_OUT: Responses = {
    504: error(
        "The query ran longer than QUERY_TIMEOUT and was stopped: narrow it with a shorter since/until "
        "range or an exact filter (user_id, user_name, ip); the same query would likely run as long again."
    )
}
READ_TIMED_OUT: Responses = {
    504: error(
        "The database did not answer within QUERY_TIMEOUT (it is slow, or a lock holds these rows) and "
        "the read was stopped; retry later."
    )
}
