"""JSON responses encoded with orjson (datetimes as ISO 8601)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette import responses


class JSONResponse(responses.JSONResponse):
    """Starlette's JSONResponse (so OpenAPI documents route schemas), encoded with orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
