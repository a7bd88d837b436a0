"""Gmail paging: resumable full-sync checkpoints, history pages folded into changes, chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from mailsync.providers.base import CursorExpiredError

HISTORY_TYPES = ["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]
MAX_PAGE_SIZE = 500  # messages.list and history.list maxResults ceiling


def checkpoint(history_id: str, page_token: str | None, total: int | None) -> str:
    return json.dumps(
        {"v": 1, "historyId": history_id, "pageToken": page_token, "total": total},
        separators=(",", ":"),
    )


def parse_checkpoint(checkpoint: str) -> tuple[str, str | None, int | None]:
    """(historyId taken when the sync began, next list page token, messagesTotal)."""
    try:
        data = json.loads(checkpoint)
        history_id, token, total = data["historyId"], data["pageToken"], data["total"]
        if (
            data.get("v") != 1
            or not (isinstance(history_id, str) and history_id.isdigit())
            or not (token is None or (isinstance(token, str) and token))
            or not (total is None or isinstance(total, int))
        ):
            raise ValueError
    except (ValueError, TypeError, KeyError):
        raise CursorExpiredError(
            "gmail checkpoint is not usable; start the full sync over"
        ) from None
    return history_id, token, total


def fold_history(
    response: dict[str, Any], changed: dict[str, None], deleted: dict[str, None]
) -> None:
    """Fold one history.list page into the ids to fetch and the ids deleted (both
    insertion-ordered sets): a message deleted later in the history is not fetched."""
    for record in response.get("history", []):
        for key in ("messagesAdded", "labelsAdded", "labelsRemoved"):
            for entry in record.get(key, []):
                mid = entry["message"]["id"]
                if mid not in deleted:
                    changed[mid] = None
        for entry in record.get("messagesDeleted", []):
            mid = entry["message"]["id"]
            changed.pop(mid, None)
            deleted[mid] = None


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
