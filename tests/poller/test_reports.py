"""Slack reports in the extensions' shape, captured by a local receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from app.config import Settings
from app.poller.poll import poll_once
from app.reports import daily_report_due
from tests.conftest import FIXTURES
from tests.poller.fake_auth0 import FakeAuth0, Receiver, make_logs

SHAPES = json.loads((FIXTURES / "ext_slack_messages_DERIVED.json").read_text())


def shape(message: dict[str, Any]) -> tuple[Any, ...]:
    """What the extensions fixed: names, colour, text, and the field titles in order."""
    [attachment] = message["attachments"]
    titles = tuple(f["title"] for f in attachment["fields"])
    return message["username"], message["icon_emoji"], attachment["color"], attachment["text"], titles


def fields(message: dict[str, Any]) -> dict[str, Any]:
    return {f["title"]: f["value"] for f in message["attachments"][0]["fields"]}


async def test_a_failed_run_is_reported_with_its_message_and_success_only_when_asked(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    slack: Receiver,
    slack_url: str,
) -> None:
    fake.add(make_logs(12))
    base = {"slack_incoming_webhook_url": slack_url, "daily_report_time": 23, "webhook_mode": "management"}
    base["webhook_url"] = "https://hooks.example.com/x"  # names the reports after the extension
    async with context_for(poller_settings(auth0_client_secret="wrong", **base)) as context:
        await poll_once(context)
    async with context_for(poller_settings(**base)) as context:
        quiet = await poll_once(context)  # a success without SLACK_SEND_SUCCESS says nothing
    async with context_for(poller_settings(slack_send_success=True, **base)) as context:
        fake.add(make_logs(3, first=13))
        loud = await poll_once(context)
    assert quiet.ok
    assert loud.ok
    runs = [b for b in slack.bodies() if "Daily" not in b["attachments"][0]["text"]]
    assert len(runs) == 2
    failed, success = runs
    expected_failed = shape(SHAPES["failed_run"])
    assert shape(failed) == expected_failed
    error = fields(failed)["Error"]
    assert "refused the client credentials" in error
    assert error != "{}"
    assert shape(success) == shape(SHAPES["success_run"])
    assert fields(success)["Logs processed"] == 3
    assert fields(success)["Next checkpoint"] == fake.logs[-1]["_id"]
    assert fields(success)["Start time"].endswith("Z")


async def test_the_daily_summary_is_sent_once_a_day(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    slack: Receiver,
    slack_url: str,
) -> None:
    fake.add(make_logs(7))
    settings = poller_settings(slack_incoming_webhook_url=slack_url, daily_report_time=0)
    async with context_for(settings) as context:
        await poll_once(context)
        await poll_once(context)
    [daily] = [b for b in slack.bodies() if "Daily" in b["attachments"][0]["text"]]
    username, emoji, color, text, titles = shape(daily)
    assert (username, emoji, color) == ("logrelay", ":rocket:", "#7cd197")
    assert text.endswith("Daily Report")
    assert titles == shape(SHAPES["daily_report"])[4]
    assert fields(daily)["Logs processed"] == 7  # each log once, though the first page is read twice
    assert (fields(daily)["Errors"], fields(daily)["Warnings"]) == (0, 0)
    assert fields(daily)["Next checkpoint"] == fake.logs[-1]["_id"]


async def test_a_lag_warning_reaches_slack_even_on_success(
    fake: FakeAuth0,
    poller_settings: Callable[..., Settings],
    context_for: Any,
    slack: Receiver,
    slack_url: str,
) -> None:
    fake.add(make_logs(30, start=datetime.now(UTC) - timedelta(days=3)))
    stop = asyncio.Event()
    fake.on_logs_request = lambda n: stop.set() if n == 1 else None
    settings = poller_settings(
        slack_incoming_webhook_url=slack_url,
        daily_report_time=23,
        log_retention_days=5,  # lag 3 days > 0.5 of it; the START_FROM is still within it
        start_from=(datetime.now(UTC) - timedelta(days=4)).date().isoformat(),
    )
    async with context_for(settings) as context:
        result = await poll_once(context, stop=stop)
    assert result.ok
    assert result.alert
    [message] = [b for b in slack.bodies() if "Daily" not in b["attachments"][0]["text"]]
    assert message["attachments"][0]["color"] == "#d13f42"
    assert "trails real time" in fields(message)["Warning"]
    assert "retention: logs between" not in fields(message)["Warning"]


def test_daily_report_is_due_at_or_after_the_hour_once_per_day() -> None:
    at = datetime(2026, 11, 23, 15, 59, tzinfo=UTC)
    assert not daily_report_due(at, 16, None)  # a fresh install waits for the hour
    assert daily_report_due(at.replace(hour=16), 16, None)
    assert not daily_report_due(at.replace(hour=17), 16, at.replace(hour=16, minute=5))
    assert daily_report_due(at + timedelta(days=1, hours=1), 16, at.replace(hour=16, minute=5))
