"""Which events a destination wants. Pure, so the outbox and the tests share one definition."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

API_PREFIX = "/api/v2/"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Match when the type is in `types` or the category in `categories` (both empty: any event),
    and, if `api_endpoints` is set, the request path is `/api/v2/<name>` or below it for a name."""

    types: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    api_endpoints: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        types: Iterable[str] = (),
        categories: Iterable[str] = (),
        api_endpoints: Iterable[str] | None = None,
    ) -> EventFilter:
        endpoints = tuple(e.strip().strip("/") for e in api_endpoints or () if e.strip().strip("/"))
        return cls(frozenset(types), frozenset(categories), endpoints)

    def matches(self, type_: str | None, category: str, data: dict[str, Any]) -> bool:
        if (self.types or self.categories) and not (type_ in self.types or category in self.categories):
            return False
        return not self.api_endpoints or self._path_matches(data)

    def _path_matches(self, data: dict[str, Any]) -> bool:
        details = data.get("details")
        request = details.get("request") if isinstance(details, dict) else None
        path = request.get("path") if isinstance(request, dict) else None
        if not isinstance(path, str):
            return False
        path = path.split("?", 1)[0].rstrip("/")
        # Exact name or below it: `users` matches /api/v2/users and /api/v2/users/x,
        # never /api/v2/users-by-email (the old extensions' substring test did).
        return any(
            path == API_PREFIX + name or path.startswith(API_PREFIX + name + "/")
            for name in self.api_endpoints
        )
