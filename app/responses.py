"""JSON responses encoded with orjson (datetimes as ISO 8601)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette import responses


class JSONResponse(responses.JSONResponse):
    """Starlette's JSONResponse (so OpenAPI documents route schemas), encoded with orjson."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            # A lone surrogate (valid in JSON input, quoted back in an error) that orjson will not
            # write: the standard library escapes it.
            return json.dumps(content, default=str, ensure_ascii=True).encode()
