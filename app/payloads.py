"""Request bodies and message ids for a destination's payload shape (see PAYLOADS in destinations)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from app import slack

Event = tuple[str, dict[str, Any]]  # (log_id, stored data)


def render_event(payload: str, log_id: str, data: dict[str, Any]) -> Any:
    """One event in the destination's shape."""
    if payload == "raw":
        return data
    if payload == "mgmt_webhook":
        details = data.get("details")
        details = details if isinstance(details, dict) else {}
        return {
            "date": data.get("date"),
            "request": details.get("request"),
            "response": details.get("response"),
        }
    return data if data.get("log_id") == log_id else {**data, "log_id": log_id}


def render_body(kind: str, payload: str, events: Sequence[Event], as_batch: bool) -> bytes:
    """The POST body: a Slack message, a JSON array (batch) or one JSON object (single)."""
    if kind == "slack":
        return orjson.dumps(slack.render_message(events))
    if as_batch:
        return orjson.dumps([render_event(payload, log_id, data) for log_id, data in events])
    log_id, data = events[0]
    return orjson.dumps(render_event(payload, log_id, data))


def message_id(log_ids: Sequence[str], as_batch: bool) -> str:
    """The `webhook-id`: the log id of a single event, or a digest of a batch's log ids.

    Both are stable across retries of the same rows, so receivers can deduplicate (a replay of the
    same event carries the same id again).
    """
    if not as_batch:
        return log_ids[0]
    digest = hashlib.sha256("\n".join(log_ids).encode()).hexdigest()[:32]
    return f"batch_{digest}"
