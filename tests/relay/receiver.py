"""A real webhook receiver for the relay tests: a tiny ASGI app served by uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    stall: asyncio.Event | None = None  # once set, the rest of the body follows its first byte
    echo: bool = False  # the body goes on with the request's target and Authorization, quoted back


class Receiver:
    """Records every request; answers from a script (FIFO), then with `default`.

    `gather` holds each request until that many are open at once (for at most `gather_within`
    seconds, a bound on waiting for a sender that never opens that many), so that a concurrency limit
    shows in `max_in_flight`; `hold` (an unset Event) keeps every request open until it is set.
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: deque[Answer] = deque()
        self.default = Answer()
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold: asyncio.Event | None = None
        self.gather: int | None = None  # hold each request until this many are open
        self.gather_within = 20.0
        self.arrived = asyncio.Condition()
        self._gate = asyncio.Event()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async with self.arrived:
                self.requests.append(Received(headers, b"".join(chunks)))
                self.arrived.notify_all()
            if self.gather is not None:
                gate = self._gate
                if self.in_flight >= self.gather:
                    gate.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gate.wait(), self.gather_within)
            if self.hold is not None:
                await self.hold.wait()
            answer = self.script.popleft() if self.script else self.default
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._gate.is_set():
                self._gate = asyncio.Event()  # the next group gathers anew
        body = answer.body
        if answer.echo:
            target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
            body += b" " + target + b" " + headers.get("authorization", "").encode()
        raw_headers = [(b"content-type", b"text/plain")]
        raw_headers += [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        if answer.stall is not None:
            await send({"type": "http.response.body", "body": body[:1], "more_body": True})
            await answer.stall.wait()
            await send({"type": "http.response.body", "body": body[1:]})
            return
        await send({"type": "http.response.body", "body": body})

    def answer(self, *answers: Answer | int) -> None:
        self.script.extend(a if isinstance(a, Answer) else Answer(a) for a in answers)

    async def wait_for(self, count: int, within: float = 10) -> None:
        """Until `count` requests have arrived."""
        async with asyncio.timeout(within), self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= count)

    def events(self) -> list[dict[str, Any]]:
        """Every event received, batch or single, in arrival order."""
        out: list[dict[str, Any]] = []
        for request in self.requests:
            body = request.json()
            out.extend(body if isinstance(body, list) else [body])
        return out

    async def start(self, port: int = 0) -> None:
        config = uvicorn.Config(self, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.005)
        bound = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{bound}/hook"
        self.port = bound

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = None
