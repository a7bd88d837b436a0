"""One user's mailbox: folders, messages and the append-only change log delta rounds read."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mailsync.fakes.microsoft.content import (
    OUTGOING_FOLDERS,
    SEED_EPOCH,
    Message,
    b64url,
    draw,
    iso_z,
)

WELL_KNOWN_FOLDERS: dict[str, str] = {
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
    "deleteditems": "Deleted Items",
    "archive": "Archive",
}


ROOT_KEY = "msgfolderroot"

# Every mailbox also has these user-made folders (key, display name, parent key), so the
# all-folders option meets nesting: a child of a well-known folder and a two-level tree.
CUSTOM_FOLDERS: tuple[tuple[str, str, str | None], ...] = (
    ("inbox/newsletters", "Newsletters", "inbox"),
    ("projects", "Projects", None),
    ("projects/falcon", "Falcon", "projects"),
    ("projects/falcon/design", "Design", "projects/falcon"),
    ("projects/roadmap", "Roadmap", "projects"),
    ("receipts", "Receipts", None),
)
# Where `spread` seeding puts messages (weights); the rest share what is left evenly.
_SPREAD_WEIGHTS = {"inbox": 45.0, "sentitems": 15.0, "archive": 8.0, "deleteditems": 4.0}
_IMMUTABLE_PREFIX = "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A"


@dataclass
class Folder:
    key: str  # well-known name, or a path of slugs for user-made folders ("projects/falcon")
    folder_id: str
    display_name: str
    parent_key: str | None = None  # None: directly under the root (msgfolderroot)
    well_known: bool = False


@dataclass(frozen=True)
class LogEntry:
    seq: int
    message_id: str
    folder_key: str
    kind: str  # "create" (entered the folder), "update", "remove" (left the folder)


def _slug(name: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in name.strip().lower()).strip("-")
    return slug or "folder"


class Mailbox:
    """One user's mailbox: folders, messages, and an append-only change log of all folders."""

    def __init__(self, address: str, tenant_id: str, seed: int) -> None:
        self.address = address
        self.tenant_id = tenant_id
        self.rng = random.Random(f"{seed}:{address}")
        self.object_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        # Told of every change once seeded (the subscriptions' notifications).
        self.on_change: Callable[[str, str, str, str], None] | None = None
        local = address.split("@", 1)[0]
        self.display_name = " ".join(p.capitalize() for p in local.replace("_", ".").split("."))
        self.root = Folder(ROOT_KEY, self.folder_id_for(ROOT_KEY), "Top of Information Store")
        self.folders: dict[str, Folder] = {}
        self._by_id: dict[str, Folder] = {}
        for key, name in WELL_KNOWN_FOLDERS.items():
            self._add_folder(Folder(key, self.folder_id_for(key), name, None, True))
        for key, name, parent in CUSTOM_FOLDERS:
            self._add_folder(Folder(key, self.folder_id_for(key), name, parent))
        self.messages: dict[str, Message] = {}
        self.totals: Counter[str] = Counter()
        self.unread: Counter[str] = Counter()
        # The log's seq n sits at index n - 1: a window (lo, hi] is the slice [lo:hi].
        self.log: list[LogEntry] = []
        self.seq = 0
        self.delta_epoch = 0
        self._round_cache: dict[tuple[str, int | None, int], list[tuple[str, str]]] = {}
        self._thread_seeds: list[int] = []

    def folder_id_for(self, key: str) -> str:
        digest = hashlib.sha256(f"{self.address}/{key}".encode()).digest()
        return "AAMkAD" + b64url(digest)[:38] + "AAA="

    def _add_folder(self, folder: Folder) -> None:
        self.folders[folder.key] = folder
        self._by_id[folder.folder_id] = folder

    def resolve_folder(self, segment: str, *, by_key: bool = False) -> Folder | None:
        """The folder a Graph URL segment names: a well-known name or a folder id. The admin
        surface (`by_key`) also accepts the fake's own keys such as "projects/falcon"."""
        lower = segment.lower()
        if lower in WELL_KNOWN_FOLDERS or (by_key and lower in self.folders):
            return self.folders[lower]
        return self._by_id.get(segment)

    def resolve_container(self, segment: str) -> Folder | None:
        """Like resolve_folder, but the root (msgfolderroot) counts too: it has child folders."""
        if segment.lower() == ROOT_KEY or segment == self.root.folder_id:
            return self.root
        return self.resolve_folder(segment)

    def children(self, parent_key: str | None) -> list[Folder]:
        parent = None if parent_key == ROOT_KEY else parent_key
        return [f for f in self.folders.values() if f.parent_key == parent]

    def create_folder(self, name: str, parent_key: str | None) -> Folder:
        if parent_key is not None and parent_key not in self.folders:
            raise KeyError(parent_key)
        if any(f.display_name.lower() == name.strip().lower() for f in self.children(parent_key)):
            raise ValueError(f"a folder named {name!r} already exists there")
        base = _slug(name) if parent_key is None else f"{parent_key}/{_slug(name)}"
        key, n = base, 1
        while key in self.folders or key in WELL_KNOWN_FOLDERS or key == ROOT_KEY:
            n += 1
            key = f"{base}-{n}"
        folder = Folder(key, self.folder_id_for(key), name.strip(), parent_key)
        self._add_folder(folder)
        return folder

    def folder_json(self, folder: Folder) -> dict[str, Any]:
        parent = self.folders.get(folder.parent_key or "") or self.root
        is_root = folder is self.root
        return {
            "id": folder.folder_id,
            "displayName": folder.display_name,
            "parentFolderId": "" if is_root else parent.folder_id,
            "childFolderCount": len(self.children(ROOT_KEY if is_root else folder.key)),
            "unreadItemCount": self.unread[folder.key],
            "totalItemCount": self.totals[folder.key],
            "isHidden": False,
        }

    def _log(self, message_id: str, folder_key: str, kind: str) -> None:
        self.seq += 1
        self.log.append(LogEntry(self.seq, message_id, folder_key, kind))
        if self.on_change is not None:
            self.on_change(self.address, message_id, folder_key, kind)

    # --- content -----------------------------------------------------------------------

    def _owner(self) -> dict[str, Any]:
        return {"emailAddress": {"name": self.display_name, "address": self.address}}

    def _new_message(self, folder_key: str, received: datetime) -> Message:
        rng = self.rng
        seed = rng.getrandbits(64)
        threads = self._thread_seeds
        if threads and rng.random() < 0.3:
            thread_seed = threads[rng.randrange(len(threads))]  # a reply in that conversation
        else:
            thread_seed = seed
            threads.append(seed)
        outgoing = folder_key in OUTGOING_FOLDERS
        is_read = rng.random() < 0.7 or outgoing
        immutable_id = _IMMUTABLE_PREFIX + b64url(rng.randbytes(33))
        return Message(immutable_id, folder_key, received, is_read, seed, thread_seed, self._draw)

    def _draw(self, message: Message) -> dict[str, Any]:
        return draw(message, self._owner())

    def seed(self, count: int, *, spread: bool = False) -> None:
        """`count` messages over the last ~120 days: mostly inbox, the rest sent items; with
        `spread`, over every folder (inbox and sent items still the largest)."""
        rng = self.rng
        if spread:
            keys = list(self.folders)
            rest = (100.0 - sum(_SPREAD_WEIGHTS.values())) / (len(keys) - len(_SPREAD_WEIGHTS))
            weights = [_SPREAD_WEIGHTS.get(k, rest) for k in keys]
        else:
            keys, weights = ["inbox", "sentitems"], [80.0, 20.0]
        cumulative = list(itertools.accumulate(weights))
        total = cumulative[-1]
        offsets = sorted((rng.uniform(0, 120 * 86400) for _ in range(count)), reverse=True)
        for offset in offsets:
            folder_key = keys[bisect.bisect_right(cumulative, rng.random() * total)]
            # Whole seconds, as Graph's receivedDateTime has.
            received = SEED_EPOCH - timedelta(seconds=int(offset))
            self._insert(self._new_message(folder_key, received))

    def _insert(self, message: Message) -> None:
        self.messages[message.immutable_id] = message
        self.totals[message.folder_key] += 1
        self.unread[message.folder_key] += not message.is_read
        self._log(message.immutable_id, message.folder_key, "create")

    def add(self, count: int, folder_key: str) -> list[str]:
        now = datetime.now(UTC).replace(microsecond=0)
        ids = []
        for _ in range(count):
            message = self._new_message(folder_key, now)
            self._insert(message)
            ids.append(message.immutable_id)
        return ids

    def update(
        self,
        message_id: str,
        *,
        subject: str | None = None,
        is_read: bool | None = None,
        folder_key: str | None = None,
    ) -> Message:
        message = self.messages[message_id]
        data = message.data
        changed = False
        if subject is not None and subject != data["subject"]:
            data["subject"] = subject
            changed = True
        if is_read is not None and is_read != message.is_read:
            self.unread[message.folder_key] += 1 if message.is_read else -1
            message.is_read = data["isRead"] = is_read
            changed = True
        moved = folder_key is not None and folder_key != message.folder_key
        if changed or moved:
            data["lastModifiedDateTime"] = iso_z(datetime.now(UTC))
            data["changeKey"] = b64url(self.rng.randbytes(15))
        if moved:
            assert folder_key is not None
            self._log(message_id, message.folder_key, "remove")
            self.totals[message.folder_key] -= 1
            self.unread[message.folder_key] -= not message.is_read
            message.folder_key = folder_key
            self.totals[folder_key] += 1
            self.unread[folder_key] += not message.is_read
            self._log(message_id, folder_key, "create")
        elif changed:
            self._log(message_id, message.folder_key, "update")
        return message

    def delete(self, message_id: str) -> None:
        message = self.messages.pop(message_id)
        self.totals[message.folder_key] -= 1
        self.unread[message.folder_key] -= not message.is_read
        self._log(message_id, message.folder_key, "remove")

    def ids(self, folder_key: str | None = None) -> list[str]:
        return [
            m.immutable_id
            for m in self.messages.values()
            if folder_key is None or m.folder_key == folder_key
        ]

    def placement(self) -> dict[str, str]:
        """Every message's immutable id -> the id of the folder it is in."""
        ids = {key: folder.folder_id for key, folder in self.folders.items()}
        return {m.immutable_id: ids[m.folder_key] for m in self.messages.values()}

    # --- delta -------------------------------------------------------------------------

    def round_items(self, folder_key: str, lo: int | None, hi: int) -> list[tuple[str, str]]:
        """(message id, "upsert" | "remove") for a folder over the log window (lo, hi].

        The log is append-only, so a window's answer never changes and can be cached.
        """
        key = (folder_key, lo, hi)
        cached = self._round_cache.get(key)
        if cached is not None:
            return cached
        first: dict[str, str] = {}
        last: dict[str, LogEntry] = {}
        for entry in self.log[lo or 0 : hi]:
            if entry.folder_key != folder_key:
                continue
            first.setdefault(entry.message_id, entry.kind)
            last[entry.message_id] = entry
        items: list[tuple[str, str]] = []
        for message_id, entry in sorted(last.items(), key=lambda kv: kv[1].seq):
            if entry.kind != "remove":
                items.append((message_id, "upsert"))
            elif lo is not None and first[message_id] != "create":
                # Entered and left within the window: the client never saw it, so say nothing.
                items.append((message_id, "remove"))
        if len(self._round_cache) >= 64:
            self._round_cache.pop(next(iter(self._round_cache)))
        self._round_cache[key] = items
        return items

    def wire_id(self, message_id: str, folder_key: str, immutable: bool) -> str:
        """Outlook's default ids change when an item moves; immutable ids (by request) do not."""
        if immutable:
            return message_id
        digest = hashlib.sha256(f"{message_id}/{self.folders[folder_key].folder_id}".encode())
        return "AAMkAGI2" + b64url(digest.digest()) + "AAA="

    def render(self, message: Message, select: tuple[str, ...] | None, immutable: bool) -> dict:
        folder = self.folders[message.folder_key]
        full: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.message",
            "@odata.etag": f'W/"{message.data["changeKey"]}"',
            "id": self.wire_id(message.immutable_id, message.folder_key, immutable),
            **json.loads(json.dumps(message.data)),
            "parentFolderId": folder.folder_id,
            "webLink": (
                "https://outlook.office365.com/owa/?ItemID="
                + message.immutable_id
                + "&exvsurl=1&viewmodel=ReadMessageItem"
            ),
        }
        if select is None:
            return full
        keep = {"@odata.type", "@odata.etag", "id", *select}
        return {k: v for k, v in full.items() if k in keep}
