"""A body of more lines or items than COMMIT_MAX_ROWS is stored a part at a time, each part its own
transaction, and answered once all are committed, with the counts and errors one transaction gave;
a part that fails is a 503, and the body sent again is stored exactly once (events, outbox rows and
quarantined lines)."""

from __future__ import annotations

import gc
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import ingest
from app.api import logs
from app.auth0.stream.event import StreamEvent
from app.config import Settings
from app.ingest import Batch, StoreResult
from app.models import OutboxItem
from tests.conftest import ADMIN_TOKEN, LiveServer, auth, bearer
from tests.factories import envelope, make_event, make_stream_body
from tests.receiver.support import count_events, quarantined, refusing, stored_ids

PART = 7  # COMMIT_MAX_ROWS in these tests
_PADDING = "x" * 1500  # 200 events of it make a body over 256 KiB, which is read a part at a time


@dataclass
class Body:
    """A body, and what the answer to it must say, worked out here from how it was made."""

    content: bytes
    items: list[bytes]  # the lines or items, in order
    ids: list[str]  # the events' ids, a repeat included
    errors: list[int]  # the positions of the lines or items that are not events, then of those
    # the database cannot hold (a NUL in the log id), as the answer lists them

    @property
    def unique(self) -> set[str]:
        return set(self.ids)

    def storable_ids(self, items: list[bytes]) -> set[str]:
        found = (orjson.loads(item) for item in items)
        return {item["log_id"] for item in found if isinstance(item, dict) and "\x00" not in item["log_id"]}


def make_body(framing: str, events: int, *, large: bool = False, poison: str | None = None) -> Body:
    """`events` events, then repeats of earlier ones, lines or items that are not events and an event
    no database can hold, spread over several parts; `poison` is the id of an event well past the
    first part."""
    sent = [make_event(description=_PADDING if large else "short") for _ in range(events)]
    if poison:
        sent[3 * PART] = make_event(log_id=poison)
    items: list[bytes] = [orjson.dumps(envelope(event)) for event in sent]
    ids = [event["log_id"] for event in sent]
    # Repeats of events stored in an earlier part; a line of the first part that is not an event, and
    # more of them, and an event with a NUL in its id, in later parts.
    for at, copied in ((PART + 2, 0), (2 * PART + 5, 1), (len(items) - 1, PART + 3)):
        items.insert(at, items[copied])
        ids.append(ids[copied])
    bad = {2: b"1", PART + 4: b"[2]", 4 * PART: b'"three"', len(items): b"4"}
    for at, item in sorted(bad.items()):
        items.insert(at, item)
    unstorable = 2 * PART + 1
    items.insert(unstorable, orjson.dumps(envelope(make_event(log_id="nul\x00id"))))
    positions = [at if at < unstorable else at + 1 for at in sorted(bad)]
    if framing == "jsonl":
        content = b"\n".join(items) + b"\n"
        errors = [at + 1 for at in positions] + [unstorable + 1]  # lines count from 1
    else:
        content = b"[" + b",\n".join(items) + b"]"
        content = content if framing == "array" else b'{"logs": ' + content + b', "total": 1}'
        errors = [*positions, unstorable]
    assert (len(content) > 256 * 1024) == large
    return Body(content, items, ids, errors)


def record_batches(live: LiveServer) -> list[int]:
    """The size (rows and rejected lines) of every batch the app's group committer is handed."""
    committer = live.context.committer
    store = committer.store
    sizes: list[int] = []

    async def recording(batch: Batch) -> StoreResult:
        sizes.append(len(batch.rows) + len(batch.rejected))
        return await store(batch)

    committer.store = recording
    return sizes


def assert_answer(answer: dict[str, Any], body: Body, framing: str, new: int) -> None:
    where = "line" if framing == "jsonl" else "item"
    assert {key: answer[key] for key in ("received", "stored", "duplicates", "rejected", "quarantined")} == {
        "received": len(body.ids) + len(body.errors),
        "stored": new,
        "duplicates": len(body.ids) - new,
        "rejected": len(body.errors),
        "quarantined": len(body.errors),
    }
    assert [error[where] for error in answer["errors"]] == body.errors
    assert "NUL" in answer["errors"][-1]["reason"]


@pytest.fixture
async def parts_server(
    make_settings: Callable[..., Settings], start_server: Callable[..., Any]
) -> LiveServer:
    """The app with COMMIT_MAX_ROWS at PART."""
    server: LiveServer = await start_server(make_settings(commit_max_rows=PART))
    return server


@pytest.mark.parametrize("framing", ["jsonl", "array", "page"])
@pytest.mark.parametrize(
    ("large", "gzipped"),
    [(False, False), (True, False), (True, True)],
    ids=["read-whole", "in-parts", "gzip-in-parts"],
)
async def test_a_body_of_many_parts_is_stored_whole_with_the_counts_of_one(
    monkeypatch: pytest.MonkeyPatch,
    parts_server: LiveServer,
    engine: AsyncEngine,
    framing: str,
    large: bool,
    gzipped: bool,
) -> None:
    """Duplicates across parts count as duplicates, and rejected lines in several parts are listed at
    their own positions, after them the event the database cannot hold (as one transaction listed
    them), and quarantined once each; the committer is never handed more than COMMIT_MAX_ROWS. A
    small body is read whole and only its transactions are cut; a large one is also made into rows a
    part at a time."""
    body = make_body(framing, 10 * PART if not large else 200, large=large)
    sizes = record_batches(parts_server)
    made: list[int] = []

    def to_rows(events: list[Any], *args: Any) -> Any:
        made.append(len(events))
        return ingest.to_rows(events, *args)

    monkeypatch.setattr(logs, "to_rows", to_rows)
    content = gzip.compress(body.content) if gzipped else body.content
    headers = auth() | ({"Content-Encoding": "gzip"} if gzipped else {})
    async with httpx.AsyncClient(base_url=parts_server.base_url, timeout=60) as client:
        response = await client.post("/api/logs", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert_answer(response.json(), body, framing, new=len(body.unique))
    assert await stored_ids(engine) == body.unique
    assert sorted(row.line_no for row in await quarantined(engine)) == sorted(body.errors)
    assert len(sizes) > 1
    assert max(sizes) <= PART, sizes
    assert sum(sizes) == len(body.ids) + len(body.errors)
    assert max(made) <= (PART if large else len(body.ids) + 1), made


async def test_a_failed_later_part_is_a_503_and_the_body_sent_again_is_stored_once(
    parts_server: LiveServer, engine: AsyncEngine
) -> None:
    """The parts before the one that fails stay committed; Auth0 sends the body again, and then every
    event is stored once, queued once for a destination that takes them, and each rejected line is
    quarantined once."""
    poison = "refused-for-now"
    body = make_body("jsonl", 200, large=True, poison=poison)
    async with httpx.AsyncClient(base_url=parts_server.base_url, timeout=60) as client:
        created = await client.post(
            "/api/destinations",
            json={"name": "hook", "url": "https://hook.example.com/in", "categories": ["failure", "other"]},
            headers=bearer(ADMIN_TOKEN),
        )
        assert created.status_code == 201, created.text
        async with refusing(engine, poison):
            refused = await client.post("/api/logs", content=body.content, headers=auth())
            assert refused.status_code == 503, refused.text
            assert set(refused.json()) == {"error", "detail"}
            first = await stored_ids(engine)
            # The parts before the failing one are stored, with their lines quarantined.
            at = next(n for n, item in enumerate(body.items) if poison.encode() in item)
            before = at // PART * PART  # the lines of the parts before the one that failed
            assert before >= 3 * PART
            assert first == body.storable_ids(body.items[:before])
            assert sorted(row.line_no for row in await quarantined(engine)) == [
                line for line in sorted(body.errors) if line <= before
            ]
        answered = await client.post("/api/logs", content=body.content, headers=auth())
        again = await client.post("/api/logs", content=body.content, headers=auth())

    assert answered.status_code == 200, answered.text
    assert_answer(answered.json(), body, "jsonl", new=len(body.unique - first))
    assert await stored_ids(engine) == body.unique
    assert await count_events(engine) == len(body.unique)
    async with engine.connect() as conn:
        queued = await conn.execute(select(OutboxItem.log_id, func.count()).group_by(OutboxItem.log_id))
        assert dict(queued.all()) == dict.fromkeys(body.unique, 1)
    assert sorted(row.line_no for row in await quarantined(engine)) == sorted(body.errors)
    # Sent once more after a 2xx (an answer lost on the way): nothing new, nothing quarantined again.
    assert again.status_code == 200, again.text
    assert_answer(again.json(), body, "jsonl", new=0)
    assert len(await quarantined(engine)) == len(body.errors)


async def test_no_parsed_event_of_a_body_read_whole_is_held_while_it_is_committed(
    live: LiveServer, engine: AsyncEngine
) -> None:
    """Only the rows wait for the commit: the events they were made of, dicts and all, are let go
    before it is awaited (a body read whole kept every one of them until the answer)."""
    committer = live.context.committer
    store = committer.store
    held: list[int] = []
    events = [make_event() for _ in range(200)]
    ids = {event["log_id"] for event in events}

    async def counting(batch: Batch) -> StoreResult:
        objects = gc.get_objects()  # other tests' leftovers among them: only this body's are counted
        held.append(sum(isinstance(thing, StreamEvent) and thing.log_id in ids for thing in objects))
        return await store(batch)

    committer.store = counting
    async with httpx.AsyncClient(base_url=live.base_url, timeout=60) as client:
        response = await client.post("/api/logs", content=make_stream_body(events), headers=auth())
    assert response.json()["stored"] == 200, response.text
    assert held == [0]
