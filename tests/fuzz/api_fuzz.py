"""Fuzz the HTTP API against its own OpenAPI document with schemathesis (not collected by pytest).

Starts `logrelay serve` on 127.0.0.1 with a fresh data directory and its own tokens, seeds it (events,
a quarantined line, two destinations, dead letters), then runs schemathesis: every operation but the
receiver with the ADMIN_TOKEN (/api/stats in a run of its own, see below), POST /api/logs with the
LOG_STREAM_TOKEN, and every operation with the API_TOKEN (admin routes must refuse it as documented).
It fails when a run finds a problem or the server logs an error.

    pip install -e ".[test,fuzz]"
    python tests/fuzz/api_fuzz.py                                     # SQLite, in a temporary directory
    python tests/fuzz/api_fuzz.py --database-url postgresql://postgres@127.0.0.1:5432/fuzz

A PostgreSQL database is migrated and filled: give it one of its own. `positive_data_acceptance` is
left out: the API refuses schema-valid values by rules JSON Schema does not hold (`until` after
`since`, a cursor from a previous page, an http(s) URL with a host), each a 4xx naming the parameter.

A known false positive (schemathesis 4.32.5, issue 3056 upstream) is kept out: with the default seed,
`negative_data_rejection` flags `GET /api/stats?type=false&user_name=null`, taking `false` and `null`
for a boolean and a null; in a query they are text, and a type code or user name that matches no event
is no error. So /api/stats has an admin run of its own without that check. Another seed may meet the
same limitation on another free-text query parameter.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
CLOSED_PORT = 9  # discard: nothing listens here, so deliveries fail and become dead letters
# (token, schemathesis options) of each run
RUNS = [
    (
        "ADMIN_TOKEN",
        [
            *("--checks", "all", "--exclude-checks", "positive_data_acceptance"),
            *("--exclude-path", "/api/logs", "--exclude-path", "/api/stats"),
        ],
    ),
    (
        "ADMIN_TOKEN",
        [
            *("--checks", "all", "--exclude-checks", "positive_data_acceptance,negative_data_rejection"),
            *("--include-path", "/api/stats"),
        ],
    ),
    ("LOG_STREAM_TOKEN", ["--checks", "all", "--include-path", "/api/logs"]),
    (
        "API_TOKEN",
        [
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
        ],
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(base: str, tokens: dict[str, str]) -> None:
    lines = [
        json.dumps(
            {
                "log_id": f"9002026112310000000000000{i:04d}",
                "data": {
                    "date": f"2026-11-23T10:{i:02d}:00.000Z",
                    "type": "f" if i % 2 else "s",
                    "description": "Wrong password",
                    "user_id": "auth0|u1",
                    "user_name": "dev@example.com",
                    "ip": "81.2.69.143",
                    "log_id": f"9002026112310000000000000{i:04d}",
                },
            }
        )
        for i in range(40)
    ]
    admin = {"Authorization": f"Bearer {tokens['ADMIN_TOKEN']}"}
    stream = {"Authorization": tokens["LOG_STREAM_TOKEN"]}
    with httpx.Client(base_url=base, timeout=30) as client:
        client.post("/api/logs", content="\n".join([*lines, "not json"]), headers=stream).raise_for_status()
        url = f"http://127.0.0.1:{CLOSED_PORT}/in"
        suffix = secrets.token_hex(4)  # a database fuzzed before holds other destinations
        ids = []
        for body in (
            {"name": f"closed-{suffix}", "url": url, "authorization": "Bearer x", "categories": ["other"]},
            {"name": f"slack-{suffix}", "kind": "slack", "url": "https://hooks.slack.com/services/T/B/x"},
        ):
            created = client.post("/api/destinations", json=body, headers=admin)
            created.raise_for_status()
            ids.append(created.json()["id"])
        client.post(f"/api/destinations/{ids[0]}/replay", headers=admin).raise_for_status()


def schemathesis(
    base: str, authorization: str, args: list[str], options: argparse.Namespace, workdir: str
) -> int:
    command = [
        str(BIN / "schemathesis"),
        "run",
        f"{base}/openapi.json",
        "--header",
        f"Authorization: {authorization}",
        "--max-examples",
        str(options.max_examples),
        "--seed",
        str(options.seed),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        *args,
    ]
    return subprocess.run(command, cwd=workdir, check=False).returncode  # its cache goes there too


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--max-examples", type=int, default=100, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    tokens = {name: secrets.token_urlsafe(24) for name in ("ADMIN_TOKEN", "API_TOKEN", "LOG_STREAM_TOKEN")}
    with tempfile.TemporaryDirectory(prefix="logrelay-fuzz-") as workdir:
        env = os.environ | tokens | {"DATA_DIR": str(Path(workdir) / "data"), "RUN_WORKERS": "true"}
        env |= {"DELIVERY_MAX_ATTEMPTS": "2", "DELIVERY_BACKOFF_BASE": "0.1", "DELIVERY_BACKOFF_MAX": "0.2"}
        if options.database_url:
            env["DATABASE_URL"] = options.database_url
            subprocess.run([str(BIN / "logrelay"), "migrate"], env=env, check=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = Path(workdir) / "serve.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [str(BIN / "logrelay"), "serve", "--port", str(port)], env=env, stdout=log, stderr=log
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    print(log_path.read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.2)
            seed(base, tokens)
            time.sleep(2)  # the replayed rows fail twice and go to dead letter
            results = [
                schemathesis(base, f"Bearer {tokens[token]}", args, options, workdir) for token, args in RUNS
            ]
        finally:
            server.terminate()
            server.wait(timeout=60)
        errors = [line for line in log_path.read_text().splitlines() if '"level":"error"' in line]
    for line in errors:
        print(line, file=sys.stderr)
    print(f"schemathesis runs: {results} (0 is clean); server errors logged: {len(errors)}")
    return 0 if not any(results) and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
