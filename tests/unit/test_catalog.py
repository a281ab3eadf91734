"""The log type catalogue against log_types.json (a copy of shared/auth0/), the source it was made from."""

from __future__ import annotations

import json

import pytest

from app.auth0.catalog import CATEGORIES, LOG_TYPES, category_of, codes_at_level, codes_in, describe
from tests.conftest import FIXTURES

SOURCE = json.loads((FIXTURES / "log_types.json").read_text())

LEVEL_4 = {"fcpro", "limit_wc", "limit_mu", "limit_ui", "api_limit", "limit_delegation"}
LEVEL_2 = {"w", "depnote", "gd_otp_rate_limit_exceed", "gd_recovery_rate_limit_exceed", "fui"}


def test_181_codes_as_in_the_source() -> None:
    assert len(LOG_TYPES) == 181
    assert {row["code"] for row in SOURCE} == set(LOG_TYPES)
    for row in SOURCE:
        known = LOG_TYPES[row["code"]]
        assert (known.description, known.category, known.level) == (
            row["description"],
            row["category"],
            row["extension_level"],
        ), row["code"]


def test_categories_partition_the_codes() -> None:
    assert CATEGORIES == ("failure", "warning", "other")
    groups = [codes_in(c) for c in CATEGORIES]
    assert sum(len(g) for g in groups) == 181
    assert frozenset().union(*groups) == frozenset(LOG_TYPES)


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("f", "failure"),
        ("fp", "failure"),
        ("pwd_leak", "failure"),
        ("coff", "failure"),
        ("gd_auth_rejected", "failure"),
        ("actions_execution_failed", "failure"),
        ("kms_key_management_failure", "failure"),
        ("w", "warning"),
        ("fui", "warning"),
        ("api_limit_warning", "warning"),
        ("depnote", "warning"),
        ("s", "other"),
        ("du", "other"),
        ("flows_execution_completed", "other"),
        ("forms_submission_succeeded", "other"),
        ("brand_new_code", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_category_of(code: str | None, category: str) -> None:
    assert category_of(code) == category


def test_codes_at_level() -> None:
    assert codes_at_level(4) == LEVEL_4
    assert codes_at_level(2) >= LEVEL_2 | LEVEL_4
    assert not (codes_at_level(2) & {"s", "ss", "sapi"})
    assert {"f", "fp", "du", "pwd_leak"} <= codes_at_level(3) - codes_at_level(4)
    assert codes_at_level(3) & LEVEL_2 == set()
    assert codes_at_level(0) == codes_at_level(1)  # no type has level 0
    assert len(codes_at_level(1)) == 98  # the extension tools' logTypes.js
    assert {"s", "sapi", "fapi", "w"} <= codes_at_level(1)
    assert "acls_summary" not in codes_at_level(1)  # schema-only codes have no level
    assert codes_at_level(5) == frozenset()
    for level in range(1, 5):
        assert codes_at_level(level + 1) <= codes_at_level(level)


def test_describe() -> None:
    assert describe("f") == LOG_TYPES["f"].description
    assert describe("brand_new_code") == "brand_new_code"
    assert describe(None)
