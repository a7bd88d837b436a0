"""One fake Gmail mailbox: seeding, the mutations the admin surface makes, and the history log."""

from __future__ import annotations

import base64
import random
import secrets
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailsync.fakes.gmail.message import FakeMessage, HistoryRecord
from mailsync.fakes.gmail.seed import SEED_SPAN_S, SEED_START


def _encode_token(*parts: object) -> str:
    raw = ":".join(str(p) for p in parts).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> list[str]:
    """Split a page token made by this module; ValueError when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except Exception as exc:  # binascii.Error, UnicodeDecodeError
        raise ValueError("bad page token") from exc
    return raw.split(":")


class NotFound(LookupError):
    """The message or history the caller asked for does not exist (any more)."""


@dataclass
class Mailbox:
    """One mailbox: messages, OAuth client credentials, and a history log with a retention floor."""

    address: str
    client_id: str
    client_secret: str
    refresh_token: str
    rng: random.Random
    messages: dict[str, FakeMessage] = field(default_factory=dict)
    history: list[HistoryRecord] = field(default_factory=list)
    history_id: int = 0
    history_floor: int = 0  # a startHistoryId below this was "pruned" and answers 404
    # Every message, oldest first by (internalDate, id): listing pages are slices of it.
    order: list[FakeMessage] = field(default_factory=list)
    # Told of every history record once seeded (the watch's Pub/Sub messages).
    on_change: Callable[[str, int], None] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, address: str, seed: int, count: int) -> Mailbox:
        rng = random.Random(f"{seed}:{address.lower()}")
        box = cls(
            address=address,
            client_id=f"{rng.getrandbits(40):012d}-fake.apps.googleusercontent.com",
            client_secret="GOCSPX-" + secrets.token_urlsafe(18),
            refresh_token="1//0" + secrets.token_urlsafe(40),
            rng=rng,
            history_id=rng.randint(100_000, 900_000),
        )
        start_ms, span_ms = int(SEED_START.timestamp() * 1000), SEED_SPAN_S * 1000
        for when in sorted(start_ms + int(rng.random() * span_ms) for _ in range(count)):
            box._insert(box._generate(when))
        box.order.sort(key=FakeMessage.sort_key)  # equal timestamps: ids decide
        # History before seeding is not retained, like history older than Gmail's retention window.
        box.history_floor = box.history_id
        return box

    # -- generation -----------------------------------------------------------------------------

    def _next_history_id(self) -> int:
        # Real history ids increase with random gaps; a client must never assume contiguity.
        self.history_id += 1 + int(self.rng.random() * 7)
        return self.history_id

    def _new_id(self, internal_ms: int) -> str:
        while True:
            mid = f"{internal_ms:011x}{self.rng.getrandbits(20):05x}"[-16:]
            if mid not in self.messages:
                return mid

    def _generate(self, internal_ms: int) -> FakeMessage:
        """A new message; only ids, time and thread are drawn now, the rest on first use."""
        rng = self.rng
        mid = self._new_id(internal_ms)
        seed = rng.getrandbits(64)
        if self.order and rng.random() < 0.3:  # a reply in an existing thread
            parent = self.order[int(rng.random() * len(self.order))]
            return FakeMessage(
                mid, parent.thread_id, internal_ms, 0, self.address, seed, parent.thread_seed, True
            )
        return FakeMessage(mid, mid, internal_ms, 0, self.address, seed, seed, False)

    def _insert(self, msg: FakeMessage) -> None:
        """Add `msg`; callers keep `order` sorted (seeding sorts once, adds are the newest)."""
        msg.history_id = self._next_history_id()
        self.messages[msg.id] = msg
        self.order.append(msg)

    def _record(self, kind: str, msg: FakeMessage, label_ids: list[str] | None = None) -> None:
        self.history.append(
            HistoryRecord(msg.history_id, kind, msg.ref(with_labels=True), list(label_ids or []))
        )
        if self.on_change is not None:
            self.on_change(self.address, msg.history_id)

    # -- mutations (each one is a history record) ---------------------------------------------

    def add_messages(self, count: int) -> list[str]:
        latest = self.order[-1].internal_date if self.order else 0
        ids = []
        for _ in range(count):
            latest = max(int(time.time() * 1000), latest + 1000)
            msg = self._generate(latest)
            self._insert(msg)
            self._record("messageAdded", msg)
            ids.append(msg.id)
        return ids

    def delete_message(self, message_id: str) -> None:
        msg = self.messages.pop(message_id, None)
        if msg is None:
            raise NotFound(message_id)
        del self.order[bisect_left(self.order, msg.sort_key(), key=FakeMessage.sort_key)]
        msg.history_id = self._next_history_id()
        self._record("messageDeleted", msg)

    def modify_labels(self, message_id: str, add: list[str], remove: list[str]) -> FakeMessage:
        msg = self.messages.get(message_id)
        if msg is None:
            raise NotFound(message_id)
        added = [lbl for lbl in dict.fromkeys(add) if lbl not in msg.label_ids]
        removed = [
            lbl for lbl in dict.fromkeys(remove) if lbl in msg.label_ids and lbl not in added
        ]
        if added:
            msg.label_ids.extend(added)
            msg.history_id = self._next_history_id()
            self._record("labelAdded", msg, added)
        if removed:
            msg.label_ids[:] = [lbl for lbl in msg.label_ids if lbl not in removed]
            msg.history_id = self._next_history_id()
            self._record("labelRemoved", msg, removed)
        return msg

    def expire_history(self) -> int:
        """Make every history id issued so far stale, as if retention had passed them."""
        self.history.clear()
        self.history_floor = self._next_history_id()
        return self.history_id

    # -- queries --------------------------------------------------------------------------------

    def newest_first(self) -> list[FakeMessage]:
        return self.order[::-1]

    def list_messages(
        self,
        max_results: int,
        page_token: str | None,
        label_ids: list[str],
        include_spam_trash: bool,
    ) -> dict[str, Any]:
        """users.messages.list, newest first; the page token names the last message returned, so
        a deletion during paging cannot shift a surviving message past the client."""
        after: tuple[int, str] | None = None
        if page_token:
            parts = decode_token(page_token)
            if len(parts) != 2 or not parts[0].isdigit():
                raise ValueError("Invalid pageToken")
            after = (int(parts[0]), parts[1])
        if include_spam_trash and not label_ids:
            # Unfiltered (what a full sync asks for): a slice of the sorted order, no scan.
            total = len(self.order)
            end = (
                total if after is None else bisect_left(self.order, after, key=FakeMessage.sort_key)
            )
            page = self.order[max(0, end - max_results) : end][::-1]
            more = end > max_results
        else:
            msgs = [
                m
                for m in reversed(self.order)
                if all(lbl in m.label_ids for lbl in label_ids)
                and (include_spam_trash or not {"SPAM", "TRASH"} & set(m.label_ids))
            ]
            total = len(msgs)
            if after is not None:
                msgs = [m for m in msgs if m.sort_key() < after]
            page = msgs[:max_results]
            more = len(msgs) > max_results
        out: dict[str, Any] = {}
        if page:
            out["messages"] = [m.ref() for m in page]
        if more:
            out["nextPageToken"] = _encode_token(page[-1].internal_date, page[-1].id)
        out["resultSizeEstimate"] = total
        return out

    def list_history(
        self,
        start: int,
        history_types: list[str],
        label_id: str | None,
        max_results: int,
        page_token: str | None,
    ) -> dict[str, Any]:
        if start < self.history_floor:
            raise NotFound("startHistoryId")
        after = start
        if page_token:
            after = max(after, int(decode_token(page_token)[0]))
        records = [
            r
            for r in self.history
            if r.id > after
            and (not history_types or r.kind in history_types)
            and (
                label_id is None
                or label_id in r.message.get("labelIds", [])
                or label_id in r.label_ids
            )
        ]
        page = records[:max_results]
        out: dict[str, Any] = {}
        if page:
            out["history"] = [r.resource() for r in page]
        if len(records) > max_results:
            out["nextPageToken"] = _encode_token(page[-1].id)
        out["historyId"] = str(self.history_id)
        return out

    def profile(self) -> dict[str, Any]:
        return {
            "emailAddress": self.address,
            "messagesTotal": len(self.messages),
            "threadsTotal": len({m.thread_id for m in self.messages.values()}),
            "historyId": str(self.history_id),
        }

    def admin_view(self, message_id: str) -> dict[str, Any]:
        msg = self.messages.get(message_id)
        if msg is None:
            raise NotFound(message_id)
        out = msg.resource("minimal")
        out["labelIds"] = list(msg.label_ids)
        out["headers"] = {n: v for n, v in msg.headers}
        return out
