"""Opaque page cursors: the (date, log_id) of the last event on a page.

A cursor only names a position in the (date, log_id) order, so it carries no secret; the keyed digest
is there so that a garbled, truncated or hand-made cursor is refused with a 400 instead of being read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.errors import BadRequest

_VERSION = 1
_KEY = b"logrelay-cursor"
_DIGEST = 8
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HEAD = struct.Struct(">Bq")  # version, microseconds since the epoch
# The longest cursor: a 255-character log id of 4-byte UTF-8 characters, in unpadded base64url.
MAX_CURSOR_LENGTH = -(-(_HEAD.size + 255 * 4 + _DIGEST) // 3) * 4


@dataclass(frozen=True, slots=True)
class Position:
    """The last event a page returned; the next page starts just after it."""

    date: datetime
    log_id: str


def encode_cursor(position: Position) -> str:
    micros = (position.date - _EPOCH) // timedelta(microseconds=1)
    payload = _HEAD.pack(_VERSION, micros) + position.log_id.encode()
    raw = payload + _digest(payload)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names; BadRequest naming `cursor` when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise _invalid("it is not base64url") from None
    payload, digest = raw[:-_DIGEST], raw[-_DIGEST:]
    if len(payload) <= _HEAD.size or digest != _digest(payload):
        raise _invalid("it was not issued by this API or was altered")
    version, micros = _HEAD.unpack_from(payload)
    if version != _VERSION:
        raise _invalid(f"unknown cursor version {version}")
    try:
        date = _EPOCH + timedelta(microseconds=micros)
        log_id = payload[_HEAD.size :].decode()
    except (OverflowError, UnicodeDecodeError):
        raise _invalid("its content is malformed") from None
    if "\x00" in log_id:  # no stored id holds one, and PostgreSQL refuses it in a query
        raise _invalid("its content is malformed")
    return Position(date, log_id)


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, key=_KEY, digest_size=_DIGEST).digest()


def _invalid(why: str) -> BadRequest:
    return BadRequest(
        [{"parameter": "cursor", "message": f"invalid cursor: {why}; use next_cursor from a previous page"}]
    )
