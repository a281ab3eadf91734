"""Slack incoming-webhook messages: one readable message per burst of events."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from app.auth0.catalog import category_of, describe

MAX_LINES = 20  # a long burst is summarised; the rest is in logrelay
_COLOURS = {"failure": "#d13f42", "warning": "#e8a33d", "other": "#7cd197"}


def render_message(events: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """{text, attachments}: a headline counting the types, then one line per event (who, app, IP,
    when, log id), at most MAX_LINES of them."""
    types = Counter(_str(data.get("type")) or "?" for _, data in events)
    noun = "event" if len(events) == 1 else "events"
    summary = ", ".join(f"{describe(code)} ({code}) x{n}" for code, n in types.most_common(3))
    if len(types) > 3:
        summary += f", and {len(types) - 3} more types"
    headline = f"{len(events)} Auth0 {noun}: {_escape(summary)}"
    lines = [_line(log_id, data) for log_id, data in events[:MAX_LINES]]
    if len(events) > MAX_LINES:
        lines.append(f"…and {len(events) - MAX_LINES} more")
    worst = min((category_of(code) for code in types), key=lambda c: ("failure", "warning", "other").index(c))
    return {
        "username": "logrelay",
        "text": headline,
        "attachments": [{"color": _COLOURS[worst], "fallback": headline, "text": "\n".join(lines)}],
    }


def _line(log_id: str, data: dict[str, Any]) -> str:
    code = _str(data.get("type"))
    parts = [f"*{_escape(describe(code))}* (`{_escape(code or '?')}`)"]
    if detail := _str(data.get("description")):
        parts[0] += f": {_escape(detail)}"
    fields = (
        ("user", _str(data.get("user_name")) or _str(data.get("user_id"))),
        ("client", _str(data.get("client_name")) or _str(data.get("client_id"))),
        ("IP", _str(data.get("ip"))),
        ("at", _str(data.get("date"))),
        ("log", log_id),
    )
    parts += [f"{label} {_escape(value)}" for label, value in fields if value]
    return "• " + " · ".join(parts)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _escape(text: str) -> str:
    """Slack's three control characters; everything else is shown as it is."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
