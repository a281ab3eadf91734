"""Poller benchmark: logs ingested per second from a fake Auth0 (a real local HTTP server), without a
rate limit and with the Management API's limits, to show that the poller keeps up with the API's rate
limit rather than with itself.

    python tests/bench/poller_bench.py --logs 20000 --rates 0,16,2
    python tests/bench/poller_bench.py --database-url postgresql://postgres@127.0.0.1:5432/test_poller

Rate 0 means no limit. With a limit of R requests per second and pages of 100 (BATCH_SIZE), the API
ceiling is R x 100 logs/s; the poller's figure is printed beside it. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.config import Settings  # noqa: E402
from app.context import open_context  # noqa: E402
from app.poller.poll import poll_once  # noqa: E402
from tests.poller.fake_auth0 import CLIENT_ID, CLIENT_SECRET, FakeAuth0, make_logs, serve  # noqa: E402


def settings_for(database_url: str, workdir: Path, auth0_url: str, take: int) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database_url,
        data_dir=workdir,
        log_stream_token="bench-ingest",
        api_token="bench-read",
        admin_token="bench-admin",
        auth0_domain=auth0_url,
        auth0_client_id=CLIENT_ID,
        auth0_client_secret=CLIENT_SECRET,
        batch_size=take,
        poll_max_run_seconds=3600,
        # Checkpoint paging from the first request; within the retention, so that no warning is due.
        start_from=(datetime.now(UTC) - timedelta(days=2)).date().isoformat(),
        service_log_level="warning",
    )


async def run_case(database_url: str, workdir: Path, logs: int, rate: int, take: int) -> dict[str, object]:
    fake = FakeAuth0(rate_limit=rate or None)
    fake.add(make_logs(logs, start=datetime.now(UTC) - timedelta(days=1)))
    async with serve(fake.app()) as auth0_url:
        settings = settings_for(database_url, workdir, auth0_url, take)
        # A fresh schema for every case, so that no checkpoint is left from the one before.
        await asyncio.to_thread(migrate.downgrade, settings, "base")
        await asyncio.to_thread(migrate.upgrade, settings)
        async with open_context(settings) as context:
            started = time.perf_counter()
            result = await poll_once(context)
            seconds = time.perf_counter() - started
    if not result.ok or result.stored != logs:
        raise SystemExit(f"the pass did not store every log: {result}")
    requests = len(fake.log_requests)
    return {
        "database": "sqlite" if settings.is_sqlite else "postgresql",
        "rate_limit_rps": rate or None,
        "logs": logs,
        "seconds": round(seconds, 2),
        "logs_per_s": round(logs / seconds),
        "requests": requests,
        "requests_per_s": round(requests / seconds, 1),
        "rate_limit_waits": result.rate_limit_waits,
        "api_ceiling_logs_per_s": rate * take if rate else None,
        "share_of_ceiling": round(logs / seconds / (rate * take), 2) if rate else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=20000)
    parser.add_argument("--rates", default="0,16,2", help="requests per second; 0 is unlimited")
    parser.add_argument("--take", type=int, default=100)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    rows = []
    for rate in (int(r) for r in args.rates.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
            # A limited run only needs enough logs to cross several rate-limit windows.
            logs = args.logs if not rate else min(args.logs, rate * args.take * 10)
            row = await run_case(url, Path(tmp), logs, rate, args.take)
        print(json.dumps(row), flush=True)
        rows.append(row)
    columns = {
        "database": "database",
        "rate_limit_rps": "limit rps",
        "logs": "logs",
        "logs_per_s": "logs/s",
        "requests_per_s": "req/s",
        "api_ceiling_logs_per_s": "ceiling/s",
        "share_of_ceiling": "share",
    }
    print("\n" + " ".join(f"{label:>10}" for label in columns.values()))
    for r in rows:
        print(" ".join(f"{r[c] if r[c] is not None else '-':>10}" for c in columns))


if __name__ == "__main__":
    asyncio.run(main())
