"""Opaque keyset cursors: where a listing stopped, bound to its workspace and its filters.

A cursor names the last message shown by (date, id); the next page starts strictly after it
in the listing's order (date descending, missing dates last, then id descending), so a page
never repeats or skips a message that existed for the whole listing, whatever syncs write.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from mailsync.core.search.ids import looks_like_id
from mailsync.errors import SearchInputError


@dataclass(frozen=True)
class Position:
    date: datetime | None  # UTC
    id: str


def _binding(workspace_id: str, fingerprint: str) -> str:
    return hashlib.sha256(f"{workspace_id}\x00{fingerprint}".encode()).hexdigest()[:16]


def encode(position: Position, workspace_id: str, fingerprint: str) -> str:
    body = {
        "b": _binding(workspace_id, fingerprint),
        "d": position.date.isoformat() if position.date else None,
        "i": position.id,
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, workspace_id: str, fingerprint: str) -> Position:
    """The position in `cursor`; SearchInputError (param cursor) when it is malformed, or was
    made for another workspace or for other filters."""
    bad = SearchInputError("cursor is not a cursor this listing gave out", param="cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = json.loads(raw)
        binding, date, position_id = body["b"], body["d"], body["i"]
        when = datetime.fromisoformat(date) if date is not None else None
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError) as exc:
        raise bad from exc
    if not isinstance(position_id, str) or not looks_like_id(position_id):
        raise bad
    if when is not None and when.tzinfo is None:
        raise bad
    if binding != _binding(workspace_id, fingerprint):
        raise SearchInputError(
            "cursor belongs to another workspace or to a listing with other parameters",
            param="cursor",
        )
    return Position(when, position_id)
