"""EventFilter: types OR categories, AND an exact-or-below API endpoint match."""

from __future__ import annotations

from typing import Any

import pytest

from app.filters import EventFilter


def api_call(path: str | None) -> dict[str, Any]:
    return {"type": "sapi", "details": {"request": {"method": "patch", "path": path}}}


def test_empty_filter_matches_everything() -> None:
    f = EventFilter.of()
    assert f.matches("s", "other", {})
    assert f.matches(None, "other", {})


def test_types_or_categories() -> None:
    f = EventFilter.of(types=["s"], categories=["failure"])
    assert f.matches("s", "other", {})
    assert f.matches("fp", "failure", {})
    assert not f.matches("w", "warning", {})
    assert not f.matches(None, "other", {})
    assert EventFilter.of(types=["w"]).matches("w", "warning", {})
    assert not EventFilter.of(types=["w"]).matches("s", "other", {})
    assert EventFilter.of(categories=["warning"]).matches("w", "warning", {})


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("/api/v2/users", True),
        ("/api/v2/users/", True),
        ("/api/v2/users/auth0|123", True),
        ("/api/v2/users/auth0|123/roles", True),
        ("/api/v2/users?page=1", True),
        ("/api/v2/users-by-email", False),
        ("/api/v2/usersx", False),
        ("/api/v2/user", False),
        ("/api/v2/clients/users", False),
        ("/api/v1/users", False),
        ("users", False),
        (None, False),
    ],
)
def test_endpoint_is_exact_or_below(path: str | None, matches: bool) -> None:
    f = EventFilter.of(api_endpoints=["users"])
    assert f.matches("sapi", "other", api_call(path)) is matches


def test_endpoint_names_are_trimmed_and_several() -> None:
    """The old extension UI example `"users, connections"` must match both."""
    f = EventFilter.of(api_endpoints=[" users", " connections "])
    assert f.api_endpoints == ("users", "connections")
    assert f.matches("sapi", "other", api_call("/api/v2/connections/con_1"))
    assert f.matches("sapi", "other", api_call("/api/v2/users"))
    assert not f.matches("sapi", "other", api_call("/api/v2/clients"))
    assert EventFilter.of(api_endpoints=["/clients/"]).matches("sapi", "other", api_call("/api/v2/clients"))


def test_nested_endpoint_name() -> None:
    f = EventFilter.of(api_endpoints=["users/roles"])
    assert not f.matches("sapi", "other", api_call("/api/v2/users/123"))
    assert f.matches("sapi", "other", api_call("/api/v2/users/roles"))


def test_types_and_endpoints_both_apply() -> None:
    f = EventFilter.of(types=["sapi"], api_endpoints=["clients"])
    assert f.matches("sapi", "other", api_call("/api/v2/clients"))
    assert not f.matches("sapi", "other", api_call("/api/v2/users"))
    assert not f.matches("s", "other", api_call("/api/v2/clients"))


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"details": None},
        {"details": "x"},
        {"details": {"request": "x"}},
        {"details": {"request": {"path": 1}}},
    ],
)
def test_endpoint_filter_with_odd_details(data: dict[str, Any]) -> None:
    assert not EventFilter.of(api_endpoints=["users"]).matches("sapi", "other", data)


def test_blank_endpoint_names_are_dropped() -> None:
    assert EventFilter.of(api_endpoints=["", " ", "/"]).api_endpoints == ()
    assert EventFilter.of(api_endpoints=None).matches("s", "other", {})
