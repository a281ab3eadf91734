"""Slack reports of poller passes, in the old extensions' shape (one attachment with start, end,
logs processed and next checkpoint; green for success, red for an error), plus the daily summary.

Reports go straight to SLACK_INCOMING_WEBHOOK_URL: they describe the poller, not tenant logs, so
they do not pass through the outbox. A report that cannot be sent is logged and dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.config import Settings
from app.context import Context
from app.poller.runs import runs_since
from app.poller.state import load_state, mark_reported

log = logging.getLogger(__name__)

SUCCESS_COLOR = "#7cd197"
ERROR_COLOR = "#d13f42"


@dataclass(slots=True)
class RunReport:
    started_at: datetime
    ended_at: datetime
    logs_processed: int
    checkpoint: str | None
    error: str | None = None
    warning: str | None = None


@dataclass(slots=True)
class DailySummary:
    logs_processed: int
    warnings: int
    errors: int
    checkpoint: str | None


async def report_pass(context: Context, run: RunReport, *, loud: bool) -> None:
    """Slack: the run on failure, on a loud warning, or always with SLACK_SEND_SUCCESS; then the
    daily summary when due. The caller holds the poller's pass lock."""
    settings = context.settings
    if settings.slack_incoming_webhook_url is None:
        return
    url = str(settings.slack_incoming_webhook_url)
    username, title = names(settings)
    if run.error or loud or settings.slack_send_success:
        await send_slack(context.http, url, run_message(run, username, title))
    try:
        async with context.engine.begin() as conn:
            state = await load_state(conn)
            now = datetime.now(UTC)
            if not daily_report_due(now, settings.daily_report_time, state.last_report_at):
                return
            runs = await runs_since(conn, now - timedelta(days=1))
            summary = DailySummary(
                sum(r.logs_read for r in runs),
                sum(1 for r in runs if r.warning),
                sum(1 for r in runs if r.error),
                state.checkpoint,
            )
            if await send_slack(context.http, url, daily_message(summary, username, title)):
                await mark_reported(conn, now)
    except Exception:
        log.exception("daily poller report failed")


def names(settings: Settings) -> tuple[str, str]:
    """(username, title) of the extension WEBHOOK_URL replaces, else logrelay's own."""
    if settings.webhook_url is not None:
        from app.extension import webhook_selection

        if webhook_selection(settings).mode == "management":
            return "auth0-management-api-webhooks", "Management API Webhooks"
        return "auth0-authentication-api-webhooks", "Authentication API Webhooks"
    return "logrelay", "logrelay Auth0 poller"


def run_message(report: RunReport, username: str, title: str) -> dict[str, Any]:
    status = "Error" if report.error else "Success"
    fields = [
        _field("Start time", _iso(report.started_at)),
        _field("End time", _iso(report.ended_at)),
        _field("Logs processed", report.logs_processed),
        _field("Next checkpoint", report.checkpoint or "none yet"),
    ]
    if report.error:
        fields.append(_field("Error", report.error, short=False))
    if report.warning:
        fields.append(_field("Warning", report.warning, short=False))
    color = ERROR_COLOR if report.error or report.warning else SUCCESS_COLOR
    return _message(username, f"{title} {status}", color, fields)


def daily_message(summary: DailySummary, username: str, title: str) -> dict[str, Any]:
    fields = [
        _field("Logs processed", summary.logs_processed),
        _field("Warnings", summary.warnings),
        _field("Errors", summary.errors),
        _field("Next checkpoint", summary.checkpoint or "none yet"),
    ]
    color = ERROR_COLOR if summary.errors else SUCCESS_COLOR
    return _message(username, f"{title} Daily Report", color, fields)


def daily_report_due(now: datetime, hour: int, last_report_at: datetime | None) -> bool:
    """Once a day, at or after DAILY_REPORT_TIME (an hour, UTC): not before the hour, and not twice."""
    due = now.astimezone(UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
    return now >= due and (last_report_at is None or last_report_at < due)


async def send_slack(http: httpx.AsyncClient, url: str, message: dict[str, Any]) -> bool:
    """POST one message; False (logged, never raised) when Slack does not take it."""
    try:
        response = await http.post(url, json=message, timeout=10.0)
    except httpx.HTTPError as exc:
        log.warning("slack report not sent", extra={"reason": str(exc) or type(exc).__name__})
        return False
    if response.status_code >= 300:
        log.warning("slack report refused", extra={"status": response.status_code})
        return False
    return True


def _message(username: str, text: str, color: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
    attachment = {"color": color, "fallback": text, "text": text, "fields": fields}
    return {"username": username, "icon_emoji": ":rocket:", "attachments": [attachment]}


def _field(title: str, value: object, *, short: bool = True) -> dict[str, Any]:
    return {"title": title, "value": value, "short": short}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
