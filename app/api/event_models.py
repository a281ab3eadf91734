"""Response models of the query API. The routes answer with pre-encoded JSON; these describe it in
the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.api.error_docs import QUERY_TIMED_OUT, READ_ERRORS, Responses, error
from app.auth0.catalog import Category

_EVENT_EXAMPLE: dict[str, Any] = {
    "log_id": "90020261123100000000000000001",
    "date": "2026-11-23T10:00:00.000Z",
    "type": "fp",
    "category": "failure",
    "user_id": "auth0|5f7c8ec7c33c6c004bbafe82",
    "user_name": "dev@example.com",
    "client_id": "aCbTAJNi5HbsjPJtRpSP6BIoLPOrSj2C",
    "client_name": "Default App",
    "connection": "Username-Password-Authentication",
    "ip": "81.2.69.143",
    "description": "Wrong email or password.",
    "source": "stream",
    "received_at": "2026-11-23T10:00:01.250Z",
    "id_generated": False,
    "data": {
        "date": "2026-11-23T10:00:00.000Z",
        "type": "fp",
        "description": "Wrong email or password.",
        "connection": "Username-Password-Authentication",
        "client_id": "aCbTAJNi5HbsjPJtRpSP6BIoLPOrSj2C",
        "client_name": "Default App",
        "ip": "81.2.69.143",
        "user_id": "auth0|5f7c8ec7c33c6c004bbafe82",
        "user_name": "dev@example.com",
        "log_id": "90020261123100000000000000001",
    },
}


class Event(BaseModel):
    """One stored event: its indexed columns and the whole original Auth0 log object in `data`."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EVENT_EXAMPLE]})

    log_id: str
    date: str = Field(
        description="The event's own date, ISO 8601 UTC.", examples=["2026-11-23T10:00:00.000Z"]
    )
    type: str | None = Field(description="Auth0 log type code.")
    category: Category
    user_id: str | None
    user_name: str | None
    client_id: str | None
    client_name: str | None
    connection: str | None
    ip: str | None
    description: str | None = Field(description="Cut to 512 characters; `data` holds the whole text.")
    source: str = Field(description="`stream` (log stream) or `poller` (Management API).")
    received_at: str = Field(description="When logrelay stored it, ISO 8601 UTC.")
    id_generated: bool = Field(
        description="True when the event had no log id and is keyed by a content hash."
    )
    data: dict[str, Any] = Field(description="The original Auth0 log object, whole.")


class EventPage(BaseModel):
    events: list[Event]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page.",
        examples=["AQAGYO6oKOgAOTAwMjAyNjExMjMxMDAwMDAwMDAwMDAwMDAwMDFr62vapoHPPA"],
    )


class Bucket(BaseModel):
    start: str = Field(description="Bucket start, ISO 8601 UTC.", examples=["2026-11-23T10:00:00.000Z"])
    total: int
    by_category: dict[str, int] = Field(examples=[{"failure": 12, "other": 340}])
    by_type: dict[str, int] = Field(examples=[{"fp": 10, "f": 2, "s": 340}])


class Stats(BaseModel):
    """Counts over [since, until); only buckets that hold events are listed."""

    interval: str = Field(examples=["hour"])
    since: str = Field(examples=["2026-11-22T10:00:00.000Z"])
    until: str = Field(examples=["2026-11-23T10:00:00.000Z"])
    total: int = Field(examples=[352])
    by_category: dict[str, int] = Field(examples=[{"failure": 12, "other": 340}])
    by_type: dict[str, int] = Field(examples=[{"fp": 10, "f": 2, "s": 340}])
    buckets: list[Bucket]


NOT_FOUND: Responses = {404: error("No such event.")}
ERRORS: Responses = {
    400: error("A malformed parameter, such as a cursor not issued by this API."),
    **READ_ERRORS,
    **QUERY_TIMED_OUT,
}
