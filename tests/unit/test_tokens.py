"""Tokens.allows and scopes_of (raw, Bearer, rotation, admin reads) and load_tokens (generate once,
keep, reuse)."""

from __future__ import annotations

import multiprocessing
import stat
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.config import Settings
from app.tokens import TOKEN_FILE, TokenFileError, Tokens, load_tokens

TOKENS = Tokens(ingest=("in-old", "in-new"), read=("rd",), admin=("adm",))


@pytest.mark.parametrize(
    "presented",
    ["in-old", "in-new", "Bearer in-old", "bearer in-new", "BEARER in-new", "Bearer  in-new ", " in-old "],
)
def test_ingest_accepts_raw_bearer_and_rotation(presented: str) -> None:
    assert TOKENS.allows("ingest", presented)


@pytest.mark.parametrize(
    "presented",
    [
        None,
        "",
        " ",
        "Bearer",
        "Bearer ",
        "in-ol",
        "in-old2",
        "IN-OLD",
        "Basic in-old",
        "Token in-old",
        "in-old,in-new",
        "rd",
        "adm",
        "Bearer rd",
    ],
)
def test_ingest_refuses(presented: str | None) -> None:
    assert not TOKENS.allows("ingest", presented)


def test_scopes() -> None:
    assert TOKENS.allows("read", "rd")
    assert TOKENS.allows("read", "Bearer adm")  # admin tokens can read
    assert not TOKENS.allows("read", "in-old")
    assert TOKENS.allows("admin", "adm")
    assert not TOKENS.allows("admin", "rd")
    assert not TOKENS.allows("admin", "in-new")


@pytest.mark.parametrize(
    ("presented", "scopes"),
    [
        ("Bearer in-new", {"ingest"}),
        ("rd", {"read"}),
        ("adm", {"admin"}),
        ("in-old,rd", set()),
        ("nope", set()),
        (None, set()),
    ],
)
def test_scopes_of_names_what_a_token_grants(presented: str | None, scopes: set[str]) -> None:
    assert TOKENS.scopes_of(presented) == scopes


def test_a_token_shared_by_two_scopes_grants_both() -> None:
    assert Tokens(ingest=("same",), read=("same",), admin=()).scopes_of("same") == {"ingest", "read"}


def test_a_raw_token_that_starts_with_bearer() -> None:
    """Observe and RunReveal tell users to type `Bearer ...` into Auth0's field: that exact value works."""
    tokens = Tokens(ingest=("Bearer cust-1 ingest-2",), read=(), admin=())
    assert tokens.allows("ingest", "Bearer cust-1 ingest-2")
    assert not tokens.allows("ingest", "cust-1 ingest-2")


def settings_for(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", **values)


def test_unset_tokens_are_generated_kept_and_reused(tmp_path: Path) -> None:
    first = load_tokens(settings_for(tmp_path))
    assert set(first.generated) == {"LOG_STREAM_TOKEN", "API_TOKEN", "ADMIN_TOKEN"}
    path = tmp_path / "data" / TOKEN_FILE
    assert first.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kept = orjson.loads(path.read_bytes())
    assert kept["LOG_STREAM_TOKEN"] == first.generated["LOG_STREAM_TOKEN"] == first.ingest[0]
    assert len(first.ingest[0]) >= 32
    assert len({first.ingest[0], first.read[0], first.admin[0]}) == 3

    second = load_tokens(settings_for(tmp_path))
    assert second.generated == {}
    assert (second.ingest, second.read, second.admin) == (first.ingest, first.read, first.admin)


def _start_with_others(barrier: Barrier, data_dir: Path, results: Queue[tuple[str, bool]]) -> None:
    barrier.wait()
    tokens = load_tokens(settings_for(data_dir))
    results.put((tokens.ingest[0], bool(tokens.generated)))


def test_processes_starting_together_share_one_set_of_tokens(tmp_path: Path) -> None:
    # serve --workers N, or serve and worker on one SQLite file, share the data directory.
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Queue()
    processes = [
        context.Process(target=_start_with_others, args=(barrier, tmp_path, results)) for _ in range(6)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert len({token for token, _ in outcomes}) == 1
    assert sum(generated for _, generated in outcomes) == 1  # one process generated and printed them
    assert orjson.loads((tmp_path / "data" / TOKEN_FILE).read_bytes())["LOG_STREAM_TOKEN"] == outcomes[0][0]


def test_configured_tokens_win_and_are_not_written(tmp_path: Path) -> None:
    tokens = load_tokens(settings_for(tmp_path, log_stream_token="a,b", api_token="r", admin_token="x"))
    assert (tokens.ingest, tokens.read, tokens.admin) == (("a", "b"), ("r",), ("x",))
    assert tokens.generated == {}
    assert not (tmp_path / "data" / TOKEN_FILE).exists()


def test_only_the_missing_token_is_generated(tmp_path: Path) -> None:
    tokens = load_tokens(settings_for(tmp_path, api_token="r", admin_token="x"))
    assert set(tokens.generated) == {"LOG_STREAM_TOKEN"}
    assert tokens.allows("ingest", tokens.generated["LOG_STREAM_TOKEN"])
    assert set(orjson.loads((tmp_path / "data" / TOKEN_FILE).read_bytes())) == {"LOG_STREAM_TOKEN"}


def test_a_token_beyond_ascii_matches_the_bytes_a_client_sends() -> None:
    # The server reads header bytes as latin-1; a client sends the token's UTF-8.
    tokens = Tokens(ingest=("tökén-ж",), read=(), admin=())
    sent = "tökén-ж".encode().decode("latin-1")
    assert tokens.allows("ingest", sent)
    assert tokens.allows("ingest", f"Bearer {sent}")
    assert not tokens.allows("ingest", "tökén-ж".encode("latin-1", "replace").decode("latin-1"))


def test_a_leftover_temp_file_does_not_widen_the_mode(tmp_path: Path) -> None:
    temp = (tmp_path / "data" / TOKEN_FILE).with_suffix(".tmp")
    temp.parent.mkdir(parents=True)
    temp.write_text("{}")
    temp.chmod(0o644)
    load_tokens(settings_for(tmp_path))
    assert stat.S_IMODE((tmp_path / "data" / TOKEN_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize("content", ["", "{not json", '["a"]', '{"API_TOKEN": 5}'])
def test_an_unreadable_token_file_is_an_error_not_new_tokens(tmp_path: Path, content: str) -> None:
    path = tmp_path / "data" / TOKEN_FILE
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(TokenFileError, match="delete it to generate new tokens"):
        load_tokens(settings_for(tmp_path))
    assert path.read_text() == content
