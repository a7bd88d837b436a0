"""The fake Gmail's in-memory mailboxes: deterministic seed data, mutations and the history log."""

from __future__ import annotations

import base64
import random
import secrets
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

SYSTEM_LABELS = ("INBOX", "SENT", "UNREAD", "IMPORTANT", "STARRED", "SPAM", "TRASH", "DRAFT")
CATEGORIES = (
    "CATEGORY_PERSONAL",
    "CATEGORY_SOCIAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
)
USER_LABELS = ("Label_1", "Label_2", "Label_3")
HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")

_PEOPLE = (
    ("Ada Lovelace", "ada@analytical.example"),
    ("Grace Hopper", "grace@navy.example"),
    (
        "Doe, Jane",
        "jane.doe@example.org",
    ),  # a comma inside the name: parsers must quote-aware split
    ("José Álvarez", "jose@correo.example"),
    ("", "noreply@notifications.example"),
    ("Alan Turing", "alan@bletchley.example"),
    ("Katherine Johnson", "kj@nasa.example"),
    ("Linus", "linus@kernel.example"),
    ("Margaret Hamilton", "mh@apollo.example"),
    ("Team Calendar", "calendar@corp.example"),
)
_WORDS = [
    "quarterly",
    "report",
    "meeting",
    "invoice",
    "schedule",
    "review",
    "draft",
    "budget",
    "launch",
    "update",
    "agenda",
    "feedback",
    "proposal",
    "contract",
    "travel",
    "dinner",
    "release",
    "notes",
    "security",
    "alert",
    "password",
    "project",
    "deadline",
    "summary",
    "minutes",
    "follow-up",
    "question",
    "photos",
    "weekend",
    "plan",
]
# Seeded messages fall in a fixed window so the same seed always yields the same mailbox.
_SEED_START = datetime(2024, 1, 1, tzinfo=UTC)
_SEED_SPAN_S = 180 * 24 * 3600


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


def _format_address(name: str, addr: str) -> str:
    if not name:
        return addr
    if "," in name or '"' in name:
        return '"{}" <{}>'.format(name.replace('"', '\\"'), addr)
    return f"{name} <{addr}>"


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
            self._labels, self._headers, self._body, self._size = _details(self)

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


def _subject(thread_seed: int) -> str:
    rng = random.Random(thread_seed ^ 0x5B1EC7)
    return " ".join(rng.sample(_WORDS, rng.randint(2, 5))).capitalize()


def _details(msg: FakeMessage) -> tuple[list[str], list[tuple[str, str]], str, int]:
    """Labels, headers, body and size of `msg`, a pure function of its seed and owner."""
    rng = random.Random(msg.seed)
    sent = rng.random() < 0.15
    me = ("", msg.owner)
    others = [p for p in _PEOPLE if p[1] != msg.owner]
    sender = me if sent else rng.choice(others)
    to = (
        rng.sample(others, rng.randint(1, 3))
        if sent
        else [me, *rng.sample(others, rng.randint(0, 2))]
    )
    cc = rng.sample(others, rng.randint(1, 2)) if rng.random() < 0.3 else []
    subject = ("Re: " if msg.reply else "") + _subject(msg.thread_seed)
    labels: list[str] = []
    if sent:
        labels.append("SENT")
    else:
        labels += ["INBOX", rng.choice(CATEGORIES)]
        if rng.random() < 0.4:
            labels.append("UNREAD")
    if rng.random() < 0.1:
        labels.append("IMPORTANT")
    if rng.random() < 0.05:
        labels.append("STARRED")
    if rng.random() < 0.1:
        labels.append(rng.choice(USER_LABELS))
    roll = rng.random()
    if roll < 0.03:
        labels = [lbl for lbl in labels if lbl != "INBOX"] + ["TRASH"]
    elif roll < 0.05:
        labels = [lbl for lbl in labels if lbl != "INBOX"] + ["SPAM"]
    words = [rng.choice(_WORDS) for _ in range(rng.randint(12, 40))]
    body = " ".join(words).capitalize() + ".\n"
    date = datetime.fromtimestamp(msg.internal_date / 1000, tz=UTC)
    headers = [
        ("From", _format_address(*sender)),
        ("To", ", ".join(_format_address(*p) for p in to)),
    ]
    if cc:
        headers.append(("Cc", ", ".join(_format_address(*p) for p in cc)))
    headers += [
        ("Subject", subject),
        ("Date", format_datetime(date)),
        ("Message-ID", f"<{msg.id}.{rng.getrandbits(32):x}@mail.example>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'text/plain; charset="UTF-8"'),
    ]
    return labels, headers, body, rng.randint(2_000, 250_000)


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
        start_ms, span_ms = int(_SEED_START.timestamp() * 1000), _SEED_SPAN_S * 1000
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
