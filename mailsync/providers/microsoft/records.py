"""Graph delta items turned into provider-neutral records (and the folder removals of a page)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from mailsync.providers.base import FolderRemoval, MessageRecord

# Only what the index needs; `id` always comes back.
SELECT_FIELDS = (
    "conversationId",
    "subject",
    "bodyPreview",
    "from",
    "sender",
    "toRecipients",
    "ccRecipients",
    "receivedDateTime",
)


def _parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    # Graph may send 7 fractional digits; fromisoformat wants at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _address(recipient: Any) -> str | None:
    if isinstance(recipient, dict):
        email = recipient.get("emailAddress")
        if isinstance(email, dict) and isinstance(email.get("address"), str):
            return email["address"] or None
    return None


def _addresses(recipients: Any) -> list[str]:
    if not isinstance(recipients, list):
        return []
    return [a for a in (_address(r) for r in recipients) if a]


def to_record(item: dict[str, Any], folder: str) -> MessageRecord:
    """A Graph message (delta item) as an index entry; `folder` becomes its only label."""
    return MessageRecord(
        provider_message_id=item["id"],
        thread_id=item.get("conversationId"),
        sender=_address(item.get("from")) or _address(item.get("sender")),
        to=_addresses(item.get("toRecipients")),
        cc=_addresses(item.get("ccRecipients")),
        subject=item.get("subject"),
        snippet=item.get("bodyPreview"),
        date=_parse_datetime(item.get("receivedDateTime")),
        labels=[folder],
        # Graph v1.0's message resource has no size property to map honestly.
        size=None,
    )


def delta_records(
    body: dict[str, Any], label: str
) -> tuple[list[MessageRecord], list[FolderRemoval]]:
    """A delta page of the folder labelled `label`: its upserts and its removals. Delta is per
    folder, so `@removed` says the message left this folder (deleted, or moved anywhere)."""
    upserts: list[MessageRecord] = []
    removed: list[FolderRemoval] = []
    for item in body.get("value") or []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        if "@removed" in item:
            removed.append(FolderRemoval(item["id"], label))
        else:
            upserts.append(to_record(item, label))
    return upserts, removed
