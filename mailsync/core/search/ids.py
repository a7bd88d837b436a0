"""Message ids the API shows: derived from (mailbox, provider id), so a rebuild keeps them.

The id is a hash, not an encoding: it is opaque (no provider id shows through) and of fixed
length whatever the provider's ids. Migration 0007 backfilled existing rows with this same
function, so it must never change: a change would give every indexed message a new id.
"""

from __future__ import annotations

import base64
import hashlib

PREFIX = "msg_"
LENGTH = len(PREFIX) + 24  # 120 bits of SHA-256, base32


def message_id(mailbox_id: str, provider_message_id: str) -> str:
    digest = hashlib.sha256(f"{mailbox_id}\x00{provider_message_id}".encode()).digest()
    return PREFIX + base64.b32encode(digest[:15]).decode().lower()


def looks_like_id(value: str) -> bool:
    """Could `value` be an id (so a lookup is worth making)?"""
    return len(value) == LENGTH and value.startswith(PREFIX) and value[len(PREFIX) :].isalnum()
