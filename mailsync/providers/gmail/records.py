"""Gmail message resources (format=metadata) turned into provider-neutral records."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

from mailsync.providers.base import MessageRecord

METADATA_HEADERS = ["From", "To", "Cc", "Subject", "Date"]


def _headers(message: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in message.get("payload", {}).get("headers", []):
        out.setdefault(str(header.get("name", "")).lower(), str(header.get("value", "")))
    return out


def _addresses(value: str | None) -> list[str]:
    if not value:
        return []
    return [addr for _, addr in getaddresses([value]) if addr]


def to_record(message: dict[str, Any]) -> MessageRecord:
    """A Gmail message resource (format=metadata) as a provider-neutral record."""
    headers = _headers(message)
    internal = message.get("internalDate")
    size = message.get("sizeEstimate")
    return MessageRecord(
        provider_message_id=str(message["id"]),
        thread_id=message.get("threadId"),
        sender=headers.get("from"),
        to=_addresses(headers.get("to")),
        cc=_addresses(headers.get("cc")),
        subject=headers.get("subject"),
        snippet=message.get("snippet"),
        date=datetime.fromtimestamp(int(internal) / 1000, tz=UTC) if internal else None,
        labels=list(message.get("labelIds", [])),
        size=int(size) if size is not None else None,
    )
