"""The `logrelay` command, run as a real subprocess: migrate, serve (first start, restart, bad
settings, a stop while a request waits for its commit) and serve --workers 2 on one SQLite file.
Every server binds 127.0.0.1 and is stopped in `finally`."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.config import Settings
from app.db import make_engine
from tests.conftest import PG_URL, Samples, sample, scrape
from tests.database_stall import write_lock
from tests.factories import make_event, make_stream_body

LOGRELAY = Path(sys.executable).with_name("logrelay")
START_DEADLINE = 60.0  # seconds; a start-up that takes longer is a failure, not a timing claim


def clean_env(**values: str) -> dict[str, str]:
    """The environment without any logrelay setting, plus `values`. PORT is a free one, not the
    default 8000, so that a server already on 8000 (another suite's, say) cannot fail these tests."""
    settings = {name.lower() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.lower() not in settings and not k.startswith("TEST_")}
    return env | {"PORT": str(free_port())} | values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(
    cwd: Path, env: dict[str, str], *args: str, tls: ssl.SSLContext | None = None, command: str = "serve"
) -> Iterator[Served]:
    """`logrelay serve` (or `worker`) on a free port, ready."""
    port = free_port()
    log = cwd / f"{command}-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(LOGRELAY), command, "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so its workers stop with it
        )
    served = Served(f"{'https' if tls else 'http'}://127.0.0.1:{port}", process, log)
    try:
        wait_until_ready(served, tls)
        yield served
    finally:
        stop(process)


def wait_until_ready(served: Served, tls: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            pytest.fail(f"logrelay exited with {served.process.returncode}:\n{served.output()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{served.base_url}/readyz", timeout=2, verify=tls or True).status_code == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"logrelay did not become ready:\n{served.output()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOGRELAY), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def sqlite_count(path: Path, table: str = "log_events") -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# --- migrate --------------------------------------------------------------------------------------


def test_migrate_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "logrelay.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{db}")
    for _ in range(2):  # the second run finds the schema at head and is a no-op
        result = run(["migrate"], tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert "latest revision" in result.stdout
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"log_events", "quarantined_lines", "destinations", "outbox_items"} <= tables
    assert revision


def test_values_with_spaces_around_them_are_trimmed(tmp_path: Path) -> None:
    db = tmp_path / "logrelay.db"
    (tmp_path / ".env").write_text('RUN_WORKERS=" false "\n')
    result = run(["migrate"], tmp_path, clean_env(DATABASE_URL=f" sqlite:///{db} "))
    assert result.returncode == 0, result.stderr
    assert sqlite_count(db, "alembic_version") == 1


def test_a_data_dir_that_looks_like_url_syntax_holds_the_database(tmp_path: Path) -> None:
    # The default DATABASE_URL was formatted from DATA_DIR: "%20" was decoded and "?" began a query,
    # so the database went to "a b" and the lock beside "a%20b", neither in DATA_DIR.
    data = tmp_path / "a%20b?c#d"
    env = clean_env(DATA_DIR=str(data), LOG_STREAM_TOKEN="data-dir-token")
    result = run(["migrate"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [data.name]
    assert sqlite_count(data / "logrelay.db", "alembic_version") == 1
    with serve(tmp_path, env) as served:
        body = make_stream_body([make_event()])
        response = httpx.post(
            f"{served.base_url}/api/logs", content=body, headers={"Authorization": "data-dir-token"}
        )
        assert response.json()["stored"] == 1, response.text
    assert sqlite_count(data / "logrelay.db") == 1
    assert sorted(path.name for path in tmp_path.iterdir() if path.suffix != ".log") == [data.name]


def test_processes_migrating_at_once_take_turns(tmp_path: Path) -> None:
    # serve and worker both migrate the embedded SQLite when they start, possibly together.
    env = clean_env()
    command = [str(LOGRELAY), "migrate"]
    processes = [
        subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], errors
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "logrelay.db")) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


def test_version(tmp_path: Path) -> None:
    result = run(["version"], tmp_path, clean_env())
    assert result.returncode == 0
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\n", result.stdout)


# --- bad settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        (["serve"], {"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        (["serve"], {"PORT": "notanumber"}, "PORT"),
        (["serve"], {"MAX_BODY_BYTES": "tiny"}, "MAX_BODY_BYTES"),
        (["serve"], {"SIGNING_SECRET_GRACE": "P60D"}, "SIGNING_SECRET_GRACE"),
        (["migrate"], {"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        (["migrate"], {"DELIVERY_KEEP_DELIVERED": "P1000000D"}, "DELIVERY_KEEP_DELIVERED"),
        (["migrate"], {"EVENT_RETENTION": "P1000000D"}, "EVENT_RETENTION"),
        # migrate, not serve: without the check these would start and serve.
        (["migrate"], {"DELIVERY_MAX_AGE": "0"}, "invalid setting DELIVERY_MAX_AGE: Input should be greater"),
        (["migrate"], {"DELIVERY_KEEP_DELIVERED": "-P1D"}, "invalid setting DELIVERY_KEEP_DELIVERED"),
        (["migrate"], {"MAX_BODY_BYTES": str(2**63)}, "invalid setting MAX_BODY_BYTES"),
        (["serve", "--port", "notanumber"], {}, "--port"),
        # Blank, trimmed to empty: it failed only at bind, as "cannot listen on  :8000".
        (["serve"], {"HOST": " "}, "invalid setting HOST: must not be empty"),
        (["serve", "--host", " "], {}, "invalid setting HOST: must not be empty"),
        (["worker", "--port", "9"], {"HOST": "\t"}, "invalid setting HOST: must not be empty"),
    ],
)
def test_bad_setting_exits_naming_it(
    tmp_path: Path, command: list[str], env: dict[str, str], named: str
) -> None:
    result = run(command, tmp_path, clean_env(**env))
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "tokens.json").exists()


def test_every_duration_setting_takes_iso_8601(tmp_path: Path) -> None:
    # The README: "Durations take seconds (60) or ISO 8601 (PT1M, P3D)", also those kept as seconds.
    env = clean_env(
        DELIVERY_TIMEOUT="PT10S",
        DELIVERY_POLL_INTERVAL="PT0.5S",
        DELIVERY_BACKOFF_BASE="PT2S",
        DELIVERY_BACKOFF_MAX="PT1H",
        POLL_MAX_RUN_SECONDS="PT5M",
        DELIVERY_LEASE="PT1M",
        # Spaces around a value are trimmed, as around seconds (a quoted .env line keeps them).
        DELIVERY_MAX_AGE=" P2D ",
        EVENT_RETENTION=" P30D ",
    )
    result = run(["migrate"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    one_clean_line(run(["migrate"], tmp_path, env | {"DELIVERY_TIMEOUT": "soon"}), 2, "DELIVERY_TIMEOUT")


def test_backup_while_serving_is_a_whole_checked_copy_that_serves(tmp_path: Path) -> None:
    env = clean_env(LOG_STREAM_TOKEN="backup-token", API_TOKEN="read")
    events = [make_event() for _ in range(50)]
    copy = tmp_path / "copy.db"
    with serve(tmp_path, env) as served:
        posted = httpx.post(
            f"{served.base_url}/api/logs",
            content=make_stream_body(events, "jsonl"),
            headers={"Authorization": "backup-token"},
        )
        assert posted.json()["stored"] == 50
        result = run(["backup", str(copy)], tmp_path, env)  # the service goes on writing meanwhile
        assert result.returncode == 0, result.stderr
        assert f"backed up to {copy}" in result.stdout
        one_clean_line(run(["backup", str(copy)], tmp_path, env), 2, str(copy), "exists")
    assert sqlite_count(copy) == 50
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600  # it holds the destinations' credentials
    assert sorted(path.name for path in tmp_path.iterdir() if "copy" in path.name) == ["copy.db"]

    restored = clean_env(DATABASE_URL=f"sqlite:///{copy}", LOG_STREAM_TOKEN="t", API_TOKEN="read")
    with serve(tmp_path, restored) as served:
        found = httpx.get(
            f"{served.base_url}/api/events/{events[0]['log_id']}", headers={"Authorization": "Bearer read"}
        )
        assert found.status_code == 200, found.text


@contextlib.contextmanager
def backups_held_at_the_copy(
    tmp_path: Path, copy: Path, count: int
) -> Iterator[list[subprocess.CompletedProcess[str]]]:
    """`count` backups of a small database to `copy`, each held at its copy (past its check that
    `copy` is free, its temporary file made) until the block ends, and their results after it: the
    database is in rollback journal mode, and an exclusive lock keeps the backups' reads out."""
    source = tmp_path / "source.db"
    results: list[subprocess.CompletedProcess[str]] = []
    with contextlib.closing(sqlite3.connect(source, isolation_level=None)) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1), (2), (3)")
        db.execute("BEGIN EXCLUSIVE")
        env = clean_env(DATABASE_URL=f"sqlite:///{source}")
        command = [str(LOGRELAY), "backup", str(copy)]
        backups = [
            subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(count)
        ]
        try:
            deadline = time.monotonic() + START_DEADLINE
            while len(partials(copy)) < count and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(partials(copy)) == count, partials(copy)
            yield results
        finally:
            db.execute("COMMIT")  # the backups go on, and end
            for backup in backups:
                stdout, stderr = backup.communicate(timeout=120)
                results.append(subprocess.CompletedProcess(command, backup.returncode, stdout, stderr))


def partials(copy: Path) -> list[Path]:
    return sorted(copy.parent.glob(f".{copy.name}*.partial"))


def test_a_backup_never_replaces_a_file_made_while_it_copies(tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    with backups_held_at_the_copy(tmp_path, copy, 1) as results:
        copy.write_bytes(b"made meanwhile")
    one_clean_line(results[0], 2, str(copy), "exists")
    assert copy.read_bytes() == b"made meanwhile"
    assert partials(copy) == []


def test_two_backups_to_one_path_make_one_whole_copy(tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    with backups_held_at_the_copy(tmp_path, copy, 2) as results:
        pass  # both are past their check that copy.db is free, with a temporary file each
    assert sorted(result.returncode for result in results) == [0, 2], [r.stderr for r in results]
    assert sqlite_count(copy, "t") == 3
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)
    assert partials(copy) == []


def test_backup_names_what_it_cannot_copy(tmp_path: Path) -> None:
    postgres = clean_env(DATABASE_URL="postgresql://postgres:hunter2-secret@127.0.0.1:5432/db")
    result = run(["backup", "copy.db"], tmp_path, postgres)
    one_clean_line(result, 2, "pg_dump")
    assert "hunter2-secret" not in result.stderr
    missing = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'none.db'}")
    one_clean_line(run(["backup", "copy.db"], tmp_path, missing), 2, "no SQLite database", "none.db")
    assert run(["migrate"], tmp_path, clean_env()).returncode == 0
    one_clean_line(run(["backup", "no/such/dir/copy.db"], tmp_path, clean_env()), 2, "not a directory")
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("sqlite://logrelay.db", "three slashes"),
        ("postgresql://user:hunter2-secret@127.0.0.1:abc/db", "not a number"),
        ("postgresql://user:hunter2-secret@127.0.0.1:99999/db", "1-65535"),
        ("postgresql://user:hunter2-secret@127.0.0.1:5432/db?sslmode=require", "ssl=require"),
    ],
)
def test_a_malformed_database_url_is_one_line_and_creates_nothing(
    tmp_path: Path, url: str, named: str
) -> None:
    for command in (["migrate"], ["serve"]):
        result = run(command, tmp_path, clean_env(DATABASE_URL=url))
        one_clean_line(result, 2, "invalid setting DATABASE_URL", named)
        assert "hunter2-secret" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no folder named "sqlite+aiosqlite:", no data dir


def test_event_retention_is_checked_at_start(tmp_path: Path) -> None:
    assert run(["migrate"], tmp_path, clean_env(EVENT_RETENTION="P30D")).returncode == 0
    short = run(["serve"], tmp_path, clean_env(EVENT_RETENTION="PT1H"))
    one_clean_line(short, 2, "invalid setting EVENT_RETENTION", "at least 1 day")
    one_clean_line(run(["worker"], tmp_path, clean_env(EVENT_RETENTION="soon")), 2, "EVENT_RETENTION")


def one_clean_line(result: subprocess.CompletedProcess[str], code: int, *named: str) -> None:
    """The command failed with `code` and said why in one line naming each of `named`, no traceback."""
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("logrelay: ")]
    assert len(lines) == 1, result.stderr
    assert all(name in lines[0] for name in named), lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUTH0_DOMAIN", "https://alice:hunter2-secret@tenant.eu.auth0.com/?token=hunter2-secret"),
        ("AUTH0_DOMAIN", "https://tenant.eu.auth0.com/hunter2-secret/api/v2"),
        ("DATABASE_URL", "alice:hunter2-secret@db.internal://logrelay"),
        ("FORWARD_URL", "https://alice:hunter2-secret@example.com:99999/?key=hunter2-secret"),
        ("SLACK_INCOMING_WEBHOOK_URL", "hooks.slack.com/services/T0/B0/hunter2-secret"),
        ("WEBHOOK_URL", "https://example.com:port/hunter2-secret"),
    ],
)
def test_a_refused_url_is_named_without_its_secrets(tmp_path: Path, name: str, value: str) -> None:
    poller = {"AUTH0_CLIENT_ID": "id", "AUTH0_CLIENT_SECRET": "client-secret"}
    result = run(["poll", "--once"], tmp_path, clean_env(**poller, **{name: value}))
    one_clean_line(result, 2, f"invalid setting {name}")
    assert "hunter2" not in result.stderr
    assert "alice" not in result.stderr


def test_an_unreachable_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=f"postgresql://user:hunter2-secret@127.0.0.1:{free_port()}/db")
    for command in (["migrate"], ["serve"], ["worker"]):
        result = run(command, tmp_path, env)
        one_clean_line(result, 1, "cannot reach the database")
        assert "hunter2-secret" not in result.stderr


def test_a_data_dir_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    env = clean_env(DATA_DIR=str(tmp_path / "a-file" / "data"))
    for command in (["migrate"], ["serve"]):
        one_clean_line(run(command, tmp_path, env), 2, "cannot use", str(tmp_path / "a-file"))


def test_a_schema_newer_than_this_release_is_refused_with_what_to_do(tmp_path: Path) -> None:
    env = clean_env()
    assert run(["migrate"], tmp_path, env).returncode == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "logrelay.db")) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    poller = {"AUTH0_DOMAIN": "http://127.0.0.1:9", "AUTH0_CLIENT_ID": "id", "AUTH0_CLIENT_SECRET": "secret"}
    for command in (["migrate"], ["serve"], ["poll", "--once"]):
        one_clean_line(run(command, tmp_path, env | poller), 2, "revision 0099", "newer than this release")


def test_a_port_that_is_taken_is_one_line_before_any_token_is_made(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for command in ("serve", "worker"):
            result = run([command, "--host", "127.0.0.1", "--port", port], tmp_path, clean_env())
            one_clean_line(result, 2, "cannot listen on", f"127.0.0.1:{port}")
    assert not (tmp_path / "data").exists()


def test_a_bad_tls_certificate_stops_serve_before_any_token_is_made(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    missing = str(tmp_path / "missing.pem")
    for args, named in (
        (["--ssl-certfile", missing], ["TLS certificate", missing]),  # which file: the error names none
        (["--ssl-certfile", str(key), "--ssl-keyfile", str(key)], ["TLS certificate", str(key)]),
        (["--ssl-keyfile", str(key)], ["--ssl-keyfile needs --ssl-certfile"]),
    ):
        result = run(["serve", "--port", str(free_port()), *args], tmp_path, clean_env())
        one_clean_line(result, 2, *named)
        assert "LOG_STREAM_TOKEN" not in result.stderr
        assert not (tmp_path / "data" / "tokens.json").exists()


def test_whichever_command_generates_the_tokens_prints_them(tmp_path: Path) -> None:
    with refusing_auth0() as auth0_url:
        env = clean_env(AUTH0_DOMAIN=auth0_url, AUTH0_CLIENT_ID="id", AUTH0_CLIENT_SECRET="secret")
        first = run(["poll", "--once"], tmp_path, env)  # the pass fails (401), after making the tokens
        assert first.returncode == 1, first.stderr
        token = re.search(r"LOG_STREAM_TOKEN=(\S+)", first.stderr)
        assert token, first.stderr
        assert orjson.loads((tmp_path / "data" / "tokens.json").read_bytes())["LOG_STREAM_TOKEN"] == token[1]
        again = run(["poll", "--once"], tmp_path, env)
        assert again.returncode == 1, again.stderr
        assert token[1] not in again.stderr


@pytest.mark.parametrize("args", [["poll", "--once"], ["poll"]])
def test_an_unconfigured_poll_refuses_before_it_makes_anything(tmp_path: Path, args: list[str]) -> None:
    """From cron on a fresh DATA_DIR: no database, and no tokens printed to a mail nobody asked for."""
    result = run(args, tmp_path, clean_env())
    one_clean_line(result, 2, "set AUTH0_DOMAIN, AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET to poll")
    assert "TOKEN" not in result.stderr
    assert not (tmp_path / "data").exists()


@contextlib.contextmanager
def refusing_auth0() -> Iterator[str]:
    """An Auth0 on 127.0.0.1 that refuses every client's credentials (401): its base URL."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"error":"access_denied","error_description":"Unauthorized"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join()


def test_dotenv_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=mysql://from-dotenv\n")
    result = run(["migrate"], tmp_path, clean_env())
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_a_misspelt_setting_is_named_with_the_one_meant(tmp_path: Path) -> None:
    """From the environment and from .env; unrelated variables (PATH, HOME, ...) say nothing."""
    (tmp_path / ".env").write_text("AUTH0_DOMIAN=example.eu.auth0.com\n")
    result = run(["migrate"], tmp_path, clean_env(FORWARD_URLS="https://siem.example.com/in"))
    assert result.returncode == 0, result.stderr
    hints = [line for line in result.stderr.splitlines() if "is not a setting" in line]
    assert hints == [
        "logrelay: FORWARD_URLS is not a setting and is ignored; did you mean FORWARD_URL?",
        "logrelay: AUTH0_DOMIAN is not a setting and is ignored; did you mean AUTH0_DOMAIN?",
    ]
    assert "siem.example.com" not in result.stderr


# --- serve ----------------------------------------------------------------------------------------


def test_first_start_generates_and_prints_the_token_then_reuses_it(tmp_path: Path) -> None:
    env = clean_env()
    event = make_event()
    with serve(tmp_path, env) as first:
        output = first.output()
        match = re.search(r"LOG_STREAM_TOKEN=(\S+)", output)
        assert match, output
        token = match.group(1)
        assert len(token) >= 32
        # The exact values to type into Auth0.
        assert re.search(rf"Authorization Token:\s+{re.escape(token)}", output), output
        assert "/api/logs" in output
        assert "application/json" in output
        assert "JSON Lines" in output

        kept = tmp_path / "data" / "tokens.json"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert orjson.loads(kept.read_bytes())["LOG_STREAM_TOKEN"] == token
        assert (tmp_path / "data" / "logrelay.db").is_file()  # the embedded default, migrated by serve
        # The database holds destinations' secrets and the Management API token: the owner's only.
        assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
        for name in ("logrelay.db", "logrelay.db-wal"):
            assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600, name

        body = make_stream_body([event])
        response = httpx.post(f"{first.base_url}/api/logs", content=body, headers={"Authorization": token})
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == 1
        bearer = httpx.post(
            f"{first.base_url}/api/logs", content=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert bearer.json()["duplicates"] == 1
        wrong = "Bearer wrong-secret-never-logged"
        refused = httpx.post(f"{first.base_url}/api/logs", content=body, headers={"Authorization": wrong})
        assert refused.status_code == 401
        printed = first.output().count(token)
    # Requests never print a token: only the start-up announcement holds it.
    after = first.output()
    assert after.count(token) == printed
    assert "wrong-secret-never-logged" not in after

    with serve(tmp_path, env) as second:
        output = second.output()
        assert "generated" not in output
        assert "LOG_STREAM_TOKEN=" not in output
        assert token not in output
        response = httpx.post(
            f"{second.base_url}/api/logs", content=make_stream_body([event]), headers={"Authorization": token}
        )
        assert response.status_code == 200, response.text
        assert response.json()["duplicates"] == 1  # stored durably by the first run
    assert sqlite_count(tmp_path / "data" / "logrelay.db") == 1  # the embedded default under ./data
    assert orjson.loads(kept.read_bytes())["LOG_STREAM_TOKEN"] == token


def test_configured_token_is_used_and_never_printed(tmp_path: Path) -> None:
    env = clean_env(LOG_STREAM_TOKEN="configured-secret-aaaa,configured-secret-bbbb")
    with serve(tmp_path, env) as served:
        for token in ("configured-secret-aaaa", "configured-secret-bbbb"):
            response = httpx.post(
                f"{served.base_url}/api/logs",
                content=make_stream_body([make_event()]),
                headers={"Authorization": token},
            )
            assert response.status_code == 200, response.text
    assert "configured-secret" not in served.output()
    assert "LOG_STREAM_TOKEN=" not in served.output()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


async def pg_count(url: str, log_ids: list[str]) -> int:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM log_events WHERE log_id = ANY($1::text[])", log_ids)
    finally:
        await conn.close()
    return int(count)


BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.skipif(not PG_URL, reason="no PostgreSQL")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_serve_with_two_workers_stores_each_event_once(tmp_path: Path, backend: str) -> None:
    """Two worker processes on one database (one SQLite file, or PostgreSQL) under concurrent posts."""
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}" if backend == "sqlite" else str(PG_URL)
    temp = tmp_path / "temp"
    temp.mkdir()
    env = clean_env(DATABASE_URL=url, LOG_STREAM_TOKEN="workers-token", API_TOKEN="read", TMPDIR=str(temp))
    if backend == "postgresql":
        migrated = run(["migrate"], tmp_path, env)  # serve migrates only the embedded SQLite
        assert migrated.returncode == 0, migrated.stderr
    pool = [make_event() for _ in range(150)]
    slices = [pool[i : i + 30] for i in range(0, 121, 5)] + [pool] * 4
    bodies = [make_stream_body(part, ("jsonl", "array", "object")[n % 3]) for n, part in enumerate(slices)]
    sent = sum(len(part) for part in slices)

    with serve(tmp_path, env, "--workers", "2") as served:
        assert len(children_of(served.process.pid)) >= 2, "uvicorn did not start two worker processes"

        def post(body: bytes) -> dict[str, int]:
            # A fresh connection per request, so that both workers take requests.
            with httpx.Client(base_url=served.base_url, timeout=60) as client:
                response = client.post("/api/logs", content=body, headers={"Authorization": "workers-token"})
            assert response.status_code == 200, response.text
            answer: dict[str, int] = response.json()
            return answer

        with ThreadPoolExecutor(max_workers=16) as executor:
            answers = list(executor.map(post, bodies))
        # /metrics sums the counters of both processes, whichever one answers the scrape.
        assert [path.name.startswith("logrelay-metrics-") for path in temp.iterdir()] == [True]
        scraped = httpx.get(f"{served.base_url}/metrics", headers={"Authorization": "Bearer read"})
        assert scraped.status_code == 200, scraped.text
        samples = scrape(scraped.text)
        assert sample(samples, "logrelay_ingest_requests_total", status="200") == len(bodies)
        stored = sample(samples, "logrelay_events_total", source="stream", outcome="stored")
        duplicates = sample(samples, "logrelay_events_total", source="stream", outcome="duplicate")
        assert (stored, duplicates) == (len(pool), sent - len(pool))
    assert list(temp.iterdir()) == [], "the metrics directory outlived serve"

    assert sum(a["received"] for a in answers) == sent
    assert sum(a["stored"] for a in answers) == len(pool)
    assert sum(a["duplicates"] for a in answers) == sent - len(pool)
    if backend == "sqlite":
        assert sqlite_count(db) == len(pool)
    else:
        assert asyncio.run(pg_count(str(PG_URL), [e["log_id"] for e in pool])) == len(pool)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_stop_answers_the_request_waiting_for_its_commit_and_exits_by_the_signal(
    tmp_path: Path, backend: str
) -> None:
    """SIGTERM (a systemd, Docker or Kubernetes stop) while a request waits for its commit: serve stops
    taking connections at once, commits and answers that request, then ends by the signal, as uvicorn
    does after its graceful shutdown (143 to a shell: a clean stop to those supervisors)."""
    db = tmp_path / "stop.db"
    url = f"sqlite:///{db}" if backend == "sqlite" else str(PG_URL)
    # A commit timeout longer than the test holds the lock (PostgreSQL waits for half of it).
    env = clean_env(DATABASE_URL=url, LOG_STREAM_TOKEN="stop-token", COMMIT_TIMEOUT="60")
    if backend == "postgresql":
        migrated = run(["migrate"], tmp_path, env)
        assert migrated.returncode == 0, migrated.stderr
    run_id = uuid.uuid4().hex  # ids of their own: this test's PostgreSQL database is not emptied
    events = [make_event(log_id=f"{run_id}-{n}") for n in range(25)]
    with serve(tmp_path, env) as served:
        port = int(served.base_url.rsplit(":", 1)[1])
        settings = Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]
        engine = make_engine(settings)
        async with httpx.AsyncClient(timeout=60) as client:
            async with write_lock(engine, settings) as queued:
                posted = asyncio.create_task(
                    client.post(
                        f"{served.base_url}/api/logs",
                        content=make_stream_body(events),
                        headers={"Authorization": "stop-token"},
                    )
                )
                await queued()
                served.process.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 10
                while not refuses_connections(port):
                    assert time.monotonic() < deadline, "serve still takes connections after SIGTERM"
                    await asyncio.sleep(0.05)
                assert not posted.done(), "the request was answered before its commit could be made"
            response = await posted
        await engine.dispose()
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == len(events)
        assert await asyncio.to_thread(served.process.wait, 30) == -signal.SIGTERM
    assert "Traceback" not in served.output(), served.output()
    if backend == "sqlite":
        assert sqlite_count(db) == len(events)
    else:
        assert await pg_count(str(PG_URL), [e["log_id"] for e in events]) == len(events)


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is needed to make a certificate")
def test_serve_over_https(tmp_path: Path) -> None:
    """Auth0 only posts to HTTPS: `serve --ssl-certfile/--ssl-keyfile` terminates TLS itself."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    tls = ssl.create_default_context(cafile=str(cert))
    env = clean_env(LOG_STREAM_TOKEN="tls-token")
    args = ("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    with serve(tmp_path, env, *args, tls=tls) as served:
        assert served.base_url.startswith("https://")
        assert "on https://" in served.output()
        response = httpx.post(
            f"{served.base_url}/api/logs",
            content=make_stream_body([make_event()]),
            headers={"Authorization": "tls-token"},
            verify=tls,
        )
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == 1


@contextlib.contextmanager
def hook() -> Iterator[tuple[str, list[Any]]]:
    """A webhook receiver on 127.0.0.1, stopped with the block: its URL and the events it got."""
    received: list[Any] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.extend(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
        finally:
            server.shutdown()
            thread.join()


def scrape_worker(worker: Served) -> Samples:
    scraped = httpx.get(f"{worker.base_url}/metrics", headers={"Authorization": "Bearer read"})
    assert scraped.status_code == 200, scraped.text
    return scrape(scraped.text)


def test_worker_with_a_port_serves_health_and_its_own_delivery_metrics(tmp_path: Path) -> None:
    """A separate `worker` process: its delivery counters are only in its own /metrics."""
    with hook() as (url, received):
        env = clean_env(LOG_STREAM_TOKEN="stream", API_TOKEN="read", FORWARD_URL=url, RUN_WORKERS="false")
        failure = make_event(type="f")
        with serve(tmp_path, env) as api:  # ingest only: its loops are off
            posted = httpx.post(
                f"{api.base_url}/api/logs",
                content=make_stream_body([failure, make_event(type="s")], "jsonl"),
                headers={"Authorization": "stream"},
            )
            assert posted.status_code == 200, posted.text
        with serve(tmp_path, env, command="worker") as worker:
            deadline = time.monotonic() + START_DEADLINE
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [event["log_id"] for event in received] == [failure["log_id"]]
            assert httpx.get(f"{worker.base_url}/healthz").json() == {"status": "ok"}
            assert httpx.get(f"{worker.base_url}/metrics").status_code == 401
            assert (
                httpx.get(
                    f"{worker.base_url}/api/events", headers={"Authorization": "Bearer read"}
                ).status_code
                == 404
            )
            # The hook has the event before the worker has its answer, counts it and records it:
            # scrape until the record (the last of these) shows, the row no longer pending.
            pending = ("logrelay_outbox_items", frozenset({("destination", "1"), ("status", "pending")}))
            deadline = time.monotonic() + START_DEADLINE
            while (samples := scrape_worker(worker)).get(pending) != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert samples.get(pending) == 0
            delivered = {"destination": "1", "verdict": "delivered"}
            assert sample(samples, "logrelay_delivery_events_total", **delivered) == 1
            worker.process.send_signal(signal.SIGTERM)
            worker.process.wait(timeout=30)  # uvicorn ends by re-raising the signal it stopped on
        assert "Application shutdown complete" in worker.output()  # the loops were stopped, not killed
