"""Who may post: the configured stream token, raw (as Auth0 sends it) or as `Bearer <token>`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from tests.conftest import ADMIN_TOKEN, INGEST_TOKEN, READ_TOKEN, bearer
from tests.factories import make_event, make_stream_body
from tests.receiver.support import count_events


@pytest.mark.parametrize(
    "authorization",
    [
        INGEST_TOKEN,
        f"Bearer {INGEST_TOKEN}",
        f"bearer {INGEST_TOKEN}",
        f"BEARER {INGEST_TOKEN}",
        f"Bearer   {INGEST_TOKEN}",  # RFC 9110 11.4: `auth-scheme [ 1*SP ( token68 / ... ) ]`
    ],
)
async def test_accepted(client: httpx.AsyncClient, engine: AsyncEngine, authorization: str) -> None:
    body = make_stream_body([make_event()])
    response = await client.post("/api/logs", content=body, headers={"Authorization": authorization})
    assert response.status_code == 200, response.text
    assert await count_events(engine) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "wrong-token"},
        {"Authorization": INGEST_TOKEN[:-1]},
        {"Authorization": INGEST_TOKEN + "x"},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer\t{INGEST_TOKEN}"},  # 1*SP: spaces, and a tab is no SP (RFC 5234)
        {"Authorization": f"Basic {INGEST_TOKEN}"},
        {"Authorization": f"{INGEST_TOKEN},{READ_TOKEN}"},
        {"X-Authorization": INGEST_TOKEN},
    ],
)
async def test_refused(client: httpx.AsyncClient, engine: AsyncEngine, headers: dict[str, str]) -> None:
    body = make_stream_body([make_event()])
    response = await client.post("/api/logs", content=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert set(answer) == {"error", "detail"}
    assert answer["error"] == "unauthorized"
    assert INGEST_TOKEN not in response.text
    assert await count_events(engine) == 0


@pytest.mark.parametrize(
    ("token", "setting"), [(READ_TOKEN, "API_TOKEN"), (ADMIN_TOKEN, "ADMIN_TOKEN")], ids=["read", "admin"]
)
async def test_other_scopes_are_forbidden_to_ingest(
    client: httpx.AsyncClient, engine: AsyncEngine, token: str, setting: str
) -> None:
    for headers in ({"Authorization": token}, bearer(token)):
        response = await client.post("/api/logs", content=make_stream_body([make_event()]), headers=headers)
        assert response.status_code == 403
        assert response.json() == {
            "error": "forbidden",
            "detail": f"this token is the {setting}; this route takes the LOG_STREAM_TOKEN",
        }
        assert token not in response.text
    assert await count_events(engine) == 0


async def test_rotation_accepts_every_configured_token(
    make_settings: Callable[..., Settings], start_server: Callable[..., Any], engine: AsyncEngine
) -> None:
    settings = make_settings(log_stream_token="old-token-aaaa, new-token-bbbb ,")
    live = await start_server(settings)
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        for header in ("old-token-aaaa", "new-token-bbbb", "Bearer new-token-bbbb", "Bearer old-token-aaaa"):
            body = make_stream_body([make_event()])
            response = await client.post("/api/logs", content=body, headers={"Authorization": header})
            assert response.status_code == 200, (header, response.text)
        for header in ("old-token-aaaa, new-token-bbbb", "", INGEST_TOKEN, "old-token-aaaa,"):
            response = await client.post("/api/logs", content=b"{}", headers={"Authorization": header})
            assert response.status_code == 401, header
    assert await count_events(engine) == 4


async def test_unauthorized_is_checked_before_the_body(client: httpx.AsyncClient) -> None:
    """A stranger's garbage gets 401, not a parse error that tells them about the body rules."""
    response = await client.post("/api/logs", content=b"\x00not json", headers={"Authorization": "nope"})
    assert response.status_code == 401
