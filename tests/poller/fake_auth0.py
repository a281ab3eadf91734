"""A fake Auth0 tenant served by a real uvicorn on 127.0.0.1: /oauth/token and /api/v2/logs with
checkpoint paging, rate-limit headers, 429s and the faults the poller must survive. Also a receiver
that records what is POSTed to it (Slack, webhooks). Used by the poller tests and its benchmark."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

CLIENT_ID = "poller-client"
CLIENT_SECRET = "poller-secret-value"


def log_id(moment: datetime, n: int) -> str:
    """The observed Auth0 format: 900 + YYYYMMDDHHMMSS + digits (56 characters)."""
    return "900" + moment.strftime("%Y%m%d%H%M%S") + f"{n:039d}"


def make_logs(
    count: int, *, start: datetime | None = None, first: int = 1, **fields: Any
) -> list[dict[str, Any]]:
    """API log items one second apart, with `_id == log_id` as the real API returns them."""
    start = start or datetime.now(UTC) - timedelta(hours=1)
    items = []
    for n in range(first, first + count):
        moment = start + timedelta(seconds=n)
        lid = log_id(moment, n)
        item = {
            "_id": lid,
            "log_id": lid,
            "date": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "type": "s",
            "description": "Successful login",
            "client_id": "client-1",
            "user_id": f"auth0|user-{n}",
            "ip": "81.2.69.143",
        }
        item.update(fields)
        items.append(item)
    return items


@dataclass
class FakeAuth0:
    logs: list[dict[str, Any]] = field(default_factory=list)
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    token_expires_in: int = 86400
    grant_refused: bool = False  # the application is not authorised for the Management API: 403
    rate_limit: int | None = None  # logs requests per window; None: unlimited (headers still sent)
    window: float = 1.0
    # The tenant's clock, standing still (None: the real clock). A rate-limit window then starts at
    # it and ends only when `window_passes()` is called: by the test's pause, not by the machine's pace.
    clock: float | None = None
    force_429: set[int] = field(default_factory=set)  # logs request numbers (1-based) answered 429
    token_429: set[int] = field(default_factory=set)  # token request numbers (1-based) answered 429
    reset_in: float | None = None  # a 429's x-ratelimit-reset, seconds from now (< 0: already past)
    retry_after: int | None = None  # a 429's Retry-After, seconds
    not_json: set[int] = field(default_factory=set)  # ... answered 200 with an HTML body
    drop: set[int] = field(default_factory=set)  # ... whose connection breaks mid-answer
    drop_from: int | None = None  # every request from this one on breaks (until set to None)
    expired_before: str | None = None  # `from` below this id is past retention: 400
    hold_from: int | None = None  # logs requests from this number on wait for `release`
    held: asyncio.Event = field(default_factory=asyncio.Event)  # set when a request is being held
    release: asyncio.Event = field(default_factory=asyncio.Event)
    on_logs_request: Callable[[int], None] | None = None
    # What happened
    log_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: int = 0
    limited: int = 0  # logs requests answered 429
    tokens: set[str] = field(default_factory=set)
    _window_start: float = 0.0
    _sorted: list[tuple[str, dict[str, Any]]] | None = None
    _sorted_for: tuple[int, str | None] = (0, None)
    _keys: list[str] = field(default_factory=list)
    _window_count: int = 0

    def add(self, items: list[dict[str, Any]]) -> None:
        self.logs.extend(items)

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def window_passes(self) -> None:
        """The rate-limit window a poller waited out is over (a standing clock moves to the next)."""
        if self.clock is not None:
            self.clock += self.window

    def _now(self) -> float:
        return time.time() if self.clock is None else self.clock

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/oauth/token", self._token, methods=["POST"]),
                Route("/api/v2/logs", self._logs, methods=["GET"]),
            ]
        )

    async def _token(self, request: Request) -> Response:
        self.token_requests += 1
        if self.token_requests in self.token_429:
            body = {"error": "too_many_requests", "error_description": "Global limit has been reached"}
            return JSONResponse(body, 429, headers=self._limited_headers({}))
        body = orjson.loads(await request.body())
        base = f"{request.url.scheme}://{request.url.netloc}"
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return JSONResponse({"error": "access_denied", "error_description": "Unauthorized"}, 401)
        if (
            self.grant_refused
            or body.get("grant_type") != "client_credentials"
            or body.get("audience") != f"{base}/api/v2/"
        ):
            return JSONResponse(
                {"error": "invalid_request", "error_description": "bad grant or audience"}, 403
            )
        token = secrets.token_hex(16)
        self.tokens.add(token)
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": self.token_expires_in}
        return JSONResponse(answer | {"scope": "read:logs read:logs_users"})

    async def _logs(self, request: Request) -> Response:
        params = dict(request.query_params)
        self.log_requests.append(params)
        number = len(self.log_requests)
        if self.on_logs_request:
            self.on_logs_request(number)
        if self.hold_from is not None and number >= self.hold_from:
            self.held.set()
            await self.release.wait()
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            return JSONResponse({"statusCode": 401, "error": "Unauthorized", "message": "Invalid token"}, 401)
        headers = self._rate_headers()
        if number in self.force_429 or headers.pop("over", None):
            self.limited += 1
            body = {"statusCode": 429, "message": "Too Many Requests"}
            return JSONResponse(body, 429, headers=self._limited_headers(headers))
        if number in self.drop or (self.drop_from is not None and number >= self.drop_from):
            return StreamingResponse(_broken_body(), media_type="application/json", headers=headers)
        if number in self.not_json:
            return Response("<html><body>502 Bad Gateway</body></html>", 200, media_type="text/html")
        if "from" in params:
            checkpoint = params["from"]
            if not checkpoint.isdigit() or (self.expired_before and checkpoint < self.expired_before):
                message = "The from parameter is invalid or the log it names is no longer available"
                return JSONResponse({"statusCode": 400, "error": "Bad Request", "message": message}, 400)
            take = min(int(params.get("take", 50)), 100)
            keyed = self._by_id()
            start = bisect.bisect_right(self._keys, checkpoint)
            page = [item for _, item in keyed[start : start + take]]
        else:
            per_page = min(int(params.get("per_page", 50)), 100)
            first = int(params.get("page", 0)) * per_page
            ordered = sorted(self._by_id(), key=lambda pair: (pair[1].get("date", ""), pair[0]))
            page = [item for _, item in ordered][first : first + per_page]
        return Response(orjson.dumps(page), 200, media_type="application/json", headers=headers)

    def _by_id(self) -> list[tuple[str, dict[str, Any]]]:
        """Logs in id order; one without an id sorts right after the log before it in the list."""
        if self._sorted is not None and self._sorted_for == (len(self.logs), self.expired_before):
            return self._sorted
        keyed: list[tuple[str, dict[str, Any]]] = []
        previous = ""
        for item in self.logs:
            key = item.get("_id") or item.get("log_id") or previous + "~"
            keyed.append((key, item))
            previous = key
        keyed.sort(key=lambda pair: pair[0])
        if self.expired_before:
            keyed = [pair for pair in keyed if pair[0] >= self.expired_before]
        self._sorted, self._sorted_for = keyed, (len(self.logs), self.expired_before)
        self._keys = [key for key, _ in keyed]
        return keyed

    def _rate_headers(self) -> dict[str, str]:
        start = math.floor(time.time() / self.window) * self.window if self.clock is None else self.clock
        if start != self._window_start:
            self._window_start, self._window_count = start, 0
        self._window_count += 1
        limit = self.rate_limit or 1000
        headers = {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(limit - self._window_count, 0)),
            "x-ratelimit-reset": str(math.ceil(start + self.window)),
        }
        if self.rate_limit is not None and self._window_count > self.rate_limit:
            headers["over"] = "1"
        return headers

    def _limited_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """A 429's headers: `reset_in` and `retry_after` override the window's."""
        if self.reset_in is not None:
            headers["x-ratelimit-reset"] = f"{self._now() + self.reset_in:.0f}"
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        return headers


async def _broken_body() -> AsyncIterator[bytes]:
    yield b'[{"_id": "9002026'
    raise ConnectionResetError("the fake Auth0 drops the connection")


@dataclass
class Receiver:
    """Records every POST: (path, headers, JSON body); answers `status`."""

    status: int = 200
    received: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._post, methods=["POST"])])

    async def _post(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.received.append((request.url.path, dict(request.headers), body))
        return Response("ok", self.status)

    def bodies(self) -> list[Any]:
        return [body for _, _, body in self.received]


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 at a free port for the block; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
