"""A body of many rejected lines: the answer lists the first LISTED_ERRORS and counts them all, the
quarantine keeps the first QUARANTINED_LINES one by one and the body whole once, and every good event
in it is stored."""

from __future__ import annotations

import gzip
import hashlib

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.logs import LISTED_ERRORS, QUARANTINED_LINES
from tests.conftest import auth
from tests.factories import envelope, make_event
from tests.receiver.support import quarantined, stored_ids

BAD = 3000  # lines that are not JSON: more than QUARANTINED_LINES, and past LISTED_ERRORS


def many_bad_lines(width: int) -> tuple[bytes, list[str], list[int]]:
    """A good event first, one in the middle and one last, between BAD lines that are not JSON of
    `width` bytes each: the body, the good ids and the bad lines' numbers."""
    good = [make_event() for _ in range(3)]
    lines = [orjson.dumps(envelope(good[0])), *[b"x" * width] * (BAD // 2)]
    lines += [
        orjson.dumps(envelope(good[1])),
        *[b"x" * width] * (BAD - BAD // 2),
        orjson.dumps(envelope(good[2])),
    ]
    bad = [number for number, line in enumerate(lines, start=1) if line.startswith(b"x")]
    return b"\n".join(lines) + b"\n", [event["log_id"] for event in good], bad


@pytest.mark.parametrize(
    ("width", "gzipped"),
    [(1, False), (100, False), (100, True)],
    ids=["read-whole", "in-parts", "gzip-in-parts"],
)
async def test_many_bad_lines_give_a_bounded_answer_and_quarantine(
    client: httpx.AsyncClient, engine: AsyncEngine, width: int, gzipped: bool
) -> None:
    body, good, bad = many_bad_lines(width)
    assert (len(body) > 256 * 1024) == (width == 100)  # read a part at a time, or whole
    content = gzip.compress(body) if gzipped else body
    headers = auth() | ({"Content-Encoding": "gzip"} if gzipped else {})
    response = await client.post("/api/logs", content=content, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert {key: value for key, value in answer.items() if key != "errors"} == {
        "received": BAD + 3,
        "stored": 3,
        "duplicates": 0,
        "rejected": BAD,
        "quarantined": BAD,
        "errors_omitted": BAD - LISTED_ERRORS,
    }
    assert [error["line"] for error in answer["errors"]] == bad[:LISTED_ERRORS]
    assert await stored_ids(engine) == set(good)

    whole, *rows = sorted(await quarantined(engine), key=lambda row: row.line_no)
    assert [row.line_no for row in rows] == bad[:QUARANTINED_LINES]
    assert all(row.raw == b"x" * width for row in rows)
    assert whole.line_no == -1
    assert whole.raw == body  # as received, inflated: the lines past the first ones are read there
    assert f"line {bad[QUARANTINED_LINES]}" in whole.reason
    assert {row.body_sha256 for row in [whole, *rows]} == {hashlib.sha256(body).hexdigest()}

    # Sent again: nothing new is quarantined, the whole body included.
    again = await client.post("/api/logs", content=content, headers=headers)
    assert again.status_code == 200, again.text
    assert (again.json()["duplicates"], again.json()["rejected"]) == (3, BAD)
    assert len(await quarantined(engine)) == QUARANTINED_LINES + 1


async def test_a_few_bad_lines_are_all_listed_and_quarantined_alone(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Up to the caps, nothing changes: every rejected line is listed, and quarantined by itself."""
    event = make_event()
    body = b"x\n" * LISTED_ERRORS + orjson.dumps(envelope(event))
    answer = (await client.post("/api/logs", content=body, headers=auth())).json()
    assert "errors_omitted" not in answer
    assert [error["line"] for error in answer["errors"]] == list(range(1, LISTED_ERRORS + 1))
    assert [row.line_no for row in await quarantined(engine)] == list(range(1, LISTED_ERRORS + 1))
    assert await stored_ids(engine) == {event["log_id"]}
