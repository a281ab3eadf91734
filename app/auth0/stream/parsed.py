"""What parsing a stream body gives: its framing, its events and its rejected lines or items, or
BodyError for a body refused whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from app.auth0.stream.event import StreamEvent

Framing = Literal["jsonl", "array", "object"]


class BodyError(ValueError):
    """The body is refused whole: empty, not JSON, a JSON scalar; the message names the line or offset."""


@dataclass(slots=True)
class Rejected:
    """An input line or item that is not an event; kept verbatim in quarantine."""

    position: int  # 1-based line for JSON Lines, 0-based item index for arrays
    reason: str
    raw: bytes


@dataclass(slots=True)
class ParsedBody:
    framing: Framing
    events: list[StreamEvent] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    broken: int = 0  # of the rejected, lines that are not JSON at all

    @property
    def received(self) -> int:
        return len(self.events) + len(self.rejected)

    @property
    def is_json(self) -> bool:
        """Whether anything in it is JSON: a body with no line that is, is refused whole."""
        return self.received > self.broken
