"""One fake Gmail message and one history record, rendered in Gmail's resource shapes."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from mailsync.fakes.gmail.seed import details


class FakeMessage:
    """One message. Only what listing needs is made up front; labels, headers and body are derived
    from `seed` on first use, so a 100k-message mailbox is created in well under a second."""

    __slots__ = (
        "id",
        "thread_id",
        "internal_date",
        "history_id",
        "owner",
        "seed",
        "thread_seed",
        "reply",
        "_labels",
        "_headers",
        "_body",
        "_size",
    )

    def __init__(
        self,
        id: str,
        thread_id: str,
        internal_date: int,  # epoch milliseconds, as Gmail reports it
        history_id: int,
        owner: str,
        seed: int,
        thread_seed: int,  # the seed of the thread's first message: it decides the subject
        reply: bool,
    ) -> None:
        self.id = id
        self.thread_id = thread_id
        self.internal_date = internal_date
        self.history_id = history_id
        self.owner = owner
        self.seed = seed
        self.thread_seed = thread_seed
        self.reply = reply
        self._labels: list[str] | None = None
        self._headers: list[tuple[str, str]] = []
        self._body = ""
        self._size = 0

    def _materialize(self) -> None:
        if self._labels is None:
            self._labels, self._headers, self._body, self._size = details(self)

    @property
    def label_ids(self) -> list[str]:
        """The live label list (mutations go through Mailbox.modify_labels)."""
        self._materialize()
        assert self._labels is not None
        return self._labels

    @property
    def headers(self) -> list[tuple[str, str]]:
        self._materialize()
        return self._headers

    @property
    def body(self) -> str:
        self._materialize()
        return self._body

    @property
    def snippet(self) -> str:
        return self.body[:100].strip()

    @property
    def size(self) -> int:
        self._materialize()
        return self._size

    def sort_key(self) -> tuple[int, str]:
        return (self.internal_date, self.id)

    def ref(self, with_labels: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "threadId": self.thread_id}
        if with_labels:
            out["labelIds"] = list(self.label_ids)
        return out

    def resource(self, fmt: str, metadata_headers: list[str] | None = None) -> dict[str, Any]:
        """The users.messages resource in one of Gmail's formats (minimal/metadata/full/raw)."""
        out: dict[str, Any] = {"id": self.id, "threadId": self.thread_id}
        if self.label_ids:  # Gmail omits labelIds on an unlabelled message
            out["labelIds"] = list(self.label_ids)
        out.update(
            snippet=self.snippet,
            sizeEstimate=self.size,
            historyId=str(self.history_id),
            internalDate=str(self.internal_date),
        )
        if fmt == "metadata":
            wanted = {h.lower() for h in metadata_headers or []}
            headers = [
                {"name": n, "value": v}
                for n, v in self.headers
                if not wanted or n.lower() in wanted
            ]
            out["payload"] = {"partId": "", "mimeType": "text/plain", "headers": headers}
        elif fmt == "full":
            data = base64.urlsafe_b64encode(self.body.encode()).decode()
            out["payload"] = {
                "partId": "",
                "mimeType": "text/plain",
                "filename": "",
                "headers": [{"name": n, "value": v} for n, v in self.headers],
                "body": {"size": len(self.body.encode()), "data": data},
            }
        elif fmt == "raw":
            text = "".join(f"{n}: {v}\r\n" for n, v in self.headers) + "\r\n" + self.body
            out["raw"] = base64.urlsafe_b64encode(text.encode()).decode()
        return out


@dataclass
class HistoryRecord:
    id: int
    kind: str  # one of HISTORY_TYPES
    message: dict[str, Any]  # {id, threadId, labelIds} as of the change
    label_ids: list[str] = field(default_factory=list)  # the labels added/removed

    def resource(self) -> dict[str, Any]:
        ref = {"id": self.message["id"], "threadId": self.message["threadId"]}
        out: dict[str, Any] = {"id": str(self.id), "messages": [ref]}
        key = {
            "messageAdded": "messagesAdded",
            "messageDeleted": "messagesDeleted",
            "labelAdded": "labelsAdded",
            "labelRemoved": "labelsRemoved",
        }[self.kind]
        entry: dict[str, Any] = {"message": dict(self.message)}
        if self.kind in ("labelAdded", "labelRemoved"):
            entry["labelIds"] = list(self.label_ids)
        out[key] = [entry]
        return out
