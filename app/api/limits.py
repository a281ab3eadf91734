"""A size limit on every request body but the log stream's (which has MAX_BODY_BYTES).

FastAPI reads and parses a route's JSON body before the route's dependencies check the token, so
without this anyone could make the server hold and parse a body of any size.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, render_error

MAX_API_BODY_BYTES = 1024 * 1024  # a destination is a few kilobytes


class BodyLimit:
    """Reads the body (at most `max_bytes`) before the application does, then hands it on."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_API_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # a disconnect: the application sees it
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            # The body as it came, then the client's own messages (a disconnect during a stream).
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"a request body here may hold at most {self.max_bytes} bytes")
        await render_error(error)(scope, receive, send)
