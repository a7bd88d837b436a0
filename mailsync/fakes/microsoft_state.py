"""The fake Microsoft's memory: tenants, tokens, mailboxes and the change logs delta rounds read."""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import json
import random
import secrets
import string
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

WELL_KNOWN_FOLDERS: dict[str, str] = {
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
    "deleteditems": "Deleted Items",
    "archive": "Archive",
}

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
# What the fake "user" consented to for the mailsync app; anything else is a consent error.
CONSENTED_SCOPES = frozenset({"Mail.Read", "Mail.ReadBasic", "User.Read"})
MAIL_READ_SCOPES = frozenset({"Mail.Read", "Mail.ReadWrite"})

MESSAGE_PROPERTIES = frozenset(
    {
        "id",
        "createdDateTime",
        "lastModifiedDateTime",
        "changeKey",
        "categories",
        "receivedDateTime",
        "sentDateTime",
        "hasAttachments",
        "internetMessageId",
        "subject",
        "bodyPreview",
        "importance",
        "parentFolderId",
        "conversationId",
        "isDeliveryReceiptRequested",
        "isReadReceiptRequested",
        "isRead",
        "isDraft",
        "webLink",
        "inferenceClassification",
        "body",
        "sender",
        "from",
        "toRecipients",
        "ccRecipients",
        "bccRecipients",
        "replyTo",
        "flag",
    }
)

# Seeded messages are dated relative to a fixed instant so a seed always yields the same mailbox.
_SEED_EPOCH = datetime(2025, 1, 15, 9, 0, tzinfo=UTC)

_FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Edsger",
    "Radia",
    "Tim",
    "Hedy",
    "Vint",
]
_LAST = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Dijkstra",
]
_LAST += ["Perlman", "Berners-Lee", "Lamarr", "Cerf"]
_DOMAINS = [
    "contoso.com",
    "fabrikam.com",
    "northwindtraders.com",
    "adventure-works.com",
    "tailspintoys.com",
    "wingtiptoys.com",
]
_TOPICS = [
    "Q3 budget review",
    "Project Falcon status",
    "Onboarding checklist",
    "Quarterly all-hands",
    "Security awareness training",
    "Vendor contract renewal",
    "Roadmap planning",
    "Office move logistics",
    "Customer escalation",
    "Release 4.2 sign-off",
    "Travel approval",
    "Expense report",
]
_TEMPLATES = [
    "{topic}",
    "Action required: {topic}",
    "Meeting notes: {topic}",
    "Invoice #{number}",
    "Your order {number} has shipped",
    "Lunch on {weekday}?",
    "Reminder: {topic}",
    "FYI - {topic}",
]
_SENTENCES = [
    "Please find the latest numbers attached.",
    "Can we move this to next week?",
    "Thanks for the quick turnaround on this.",
    "I have added my comments inline.",
    "Let me know if anything is missing.",
    "The deadline is end of day Friday.",
    "Looping in the rest of the team for visibility.",
    "We still need a decision on the open items.",
    "Here is the summary from this morning's call.",
    "I will follow up with the details tomorrow.",
]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
_CATEGORIES = ["Blue category", "Red category", "Green category", "Orange category"]


class GraphFault(Exception):
    """A Graph error response: status, Graph error code, message and extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class IdentityFault(Exception):
    """An AAD token-endpoint error: status, OAuth error, AADSTS number and description."""

    def __init__(self, status: int, error: str, aadsts: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.aadsts = aadsts
        self.description = description


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped string; nobody verifies it (the fake looks tokens up, msal only decodes)."""
    header = {"typ": "JWT", "alg": "RS256", "kid": "mailsync-fake"}
    return ".".join(
        [
            b64url(json.dumps(header, separators=(",", ":")).encode()),
            b64url(json.dumps(claims, separators=(",", ":")).encode()),
            b64url(secrets.token_bytes(32)),
        ]
    )


@dataclass
class Tenant:
    tenant_id: str
    client_id: str
    client_secret: str
    domains: set[str] = field(default_factory=set)


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


class Message:
    """One message. Only what the fake needs for bookkeeping is made up front; the Graph
    properties are drawn from the message's own seed the first time anything reads them,
    which is what lets a 100,000-message mailbox be created in well under a second."""

    __slots__ = (
        "immutable_id",
        "folder_key",
        "origin_key",
        "received",
        "is_read",
        "seed",
        "thread_seed",
        "_data",
        "_factory",
    )

    def __init__(
        self,
        immutable_id: str,
        folder_key: str,
        received: datetime,
        is_read: bool,
        seed: int,
        thread_seed: int,
        factory: Callable[[Message], dict[str, Any]],
    ) -> None:
        self.immutable_id = immutable_id
        self.folder_key = folder_key
        self.origin_key = folder_key  # where it was created: decides sender and draft state
        self.received = received
        self.is_read = is_read
        self.seed = seed
        self.thread_seed = thread_seed  # the seed of the conversation's first message
        self._data: dict[str, Any] | None = None
        self._factory: Callable[[Message], dict[str, Any]] | None = factory

    @property
    def data(self) -> dict[str, Any]:
        """Graph properties other than id/parentFolderId (isRead mirrors `is_read`)."""
        if self._data is None:
            assert self._factory is not None
            self._data = self._factory(self)
            self._factory = None
        return self._data


@dataclass(frozen=True)
class LogEntry:
    seq: int
    message_id: str
    folder_key: str
    kind: str  # "create" (entered the folder), "update", "remove" (left the folder)


@dataclass
class AccessTokenInfo:
    tenant_id: str
    client_id: str
    address: str | None  # None for app-only tokens
    scopes: frozenset[str]
    expires_at: float


@dataclass
class RefreshTokenInfo:
    tenant_id: str
    client_id: str
    address: str


@dataclass(frozen=True)
class RoundState:
    """Where a delta round stands: the folder, the log window (lo, hi] and the next offset."""

    address: str
    folder_key: str
    lo: int | None  # None: the initial round, which reports the folder's content as of `hi`
    hi: int
    offset: int
    select: tuple[str, ...] | None


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

    # --- content -----------------------------------------------------------------------

    def _person(self, rng: random.Random) -> dict[str, Any]:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        domain = rng.choice(_DOMAINS)
        address = f"{first}.{last}".lower().replace("-", "") + f"@{domain}"
        return {"emailAddress": {"name": f"{first} {last}", "address": address}}

    def _owner(self) -> dict[str, Any]:
        return {"emailAddress": {"name": self.display_name, "address": self.address}}

    @staticmethod
    def _thread(thread_seed: int) -> tuple[str, str]:
        """(conversationId, base subject) of the conversation a seed started."""
        rng = random.Random(thread_seed)
        template = rng.choice(_TEMPLATES)
        subject = template.format(
            topic=rng.choice(_TOPICS),
            number=rng.randint(10000, 99999),
            weekday=rng.choice(_WEEKDAYS),
        )
        return "AAQkAD" + b64url(rng.randbytes(30)), subject

    def _new_message(self, folder_key: str, received: datetime) -> Message:
        rng = self.rng
        seed = rng.getrandbits(64)
        threads = self._thread_seeds
        if threads and rng.random() < 0.3:
            thread_seed = threads[rng.randrange(len(threads))]  # a reply in that conversation
        else:
            thread_seed = seed
            threads.append(seed)
        outgoing = folder_key in ("sentitems", "drafts")
        is_read = rng.random() < 0.7 or outgoing
        immutable_id = _IMMUTABLE_PREFIX + b64url(rng.randbytes(33))
        return Message(immutable_id, folder_key, received, is_read, seed, thread_seed, self._draw)

    def _draw(self, message: Message) -> dict[str, Any]:
        """Graph properties of a message, from its seed alone."""
        rng = random.Random(message.seed)
        conversation_id, base = self._thread(message.thread_seed)
        subject = base if message.thread_seed == message.seed else f"RE: {base}"
        outgoing = message.origin_key in ("sentitems", "drafts")
        sender = self._owner() if outgoing else self._person(rng)
        to = [self._person(rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        if not outgoing:
            to.insert(0, self._owner())
        cc = [self._person(rng) for _ in range(rng.choice([0, 0, 0, 1, 2]))]
        body = " ".join(rng.sample(_SENTENCES, rng.randint(2, 4)))
        greeting = sender["emailAddress"]["name"].split(" ")[0]
        text = f"Hi {to[0]['emailAddress']['name'].split(' ')[0]}, {body} Best, {greeting}"
        received = message.received
        sent = received - timedelta(seconds=rng.randint(1, 90))
        sender_domain = sender["emailAddress"]["address"].split("@", 1)[1]
        return {
            "createdDateTime": iso_z(received),
            "lastModifiedDateTime": iso_z(received),
            "changeKey": b64url(rng.randbytes(15)),
            "categories": [rng.choice(_CATEGORIES)] if rng.random() < 0.1 else [],
            "receivedDateTime": iso_z(received),
            "sentDateTime": iso_z(sent),
            "hasAttachments": rng.random() < 0.15,
            "internetMessageId": (
                "<"
                + "".join(rng.choices(string.ascii_uppercase + string.digits, k=24))
                + f"@{sender_domain}>"
            ),
            "subject": subject,
            "bodyPreview": text[:255],
            "importance": "high" if rng.random() < 0.05 else "normal",
            "conversationId": conversation_id,
            "isDeliveryReceiptRequested": False,
            "isReadReceiptRequested": False,
            "isRead": message.is_read,
            "isDraft": message.origin_key == "drafts",
            "inferenceClassification": "focused" if rng.random() < 0.8 else "other",
            "body": {"contentType": "html", "content": f"<html><body><p>{text}</p></body></html>"},
            "sender": sender,
            "from": sender,
            "toRecipients": to,
            "ccRecipients": cc,
            "bccRecipients": [],
            "replyTo": [],
            "flag": {"flagStatus": "notFlagged"},
        }

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
            received = _SEED_EPOCH - timedelta(seconds=int(offset))
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


class FakeMicrosoftState:
    """Everything the fake knows; every public method takes the lock."""

    def __init__(self, seed: int, seed_messages: int, token_lifetime: int) -> None:
        self.seed = seed
        self.seed_messages = seed_messages
        self.token_lifetime = token_lifetime
        self.lock = threading.RLock()
        self.tenants: dict[str, Tenant] = {}
        self.domain_tenants: dict[str, str] = {}
        self.mailboxes: dict[str, Mailbox] = {}
        self.object_ids: dict[str, str] = {}
        self.refresh_tokens: dict[str, RefreshTokenInfo] = {}
        self.user_refresh_tokens: dict[str, str] = {}  # the one handed out by /_admin
        self.access_tokens: dict[str, AccessTokenInfo] = {}
        # Encrypted so clients cannot lean on their content; the key is per process, so state
        # tokens from an earlier fake process are unknown sync state here.
        self._fernet = Fernet(Fernet.generate_key())

    # --- admin -------------------------------------------------------------------------

    def _tenant_for(self, domain: str, tenant_id: str | None) -> Tenant:
        if tenant_id is None:
            tenant_id = self.domain_tenants.get(domain) or str(
                uuid.uuid5(uuid.NAMESPACE_DNS, f"mailsync-fake:{self.seed}:{domain}")
            )
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            rng = random.Random(f"{self.seed}:tenant:{tenant_id}")
            alphabet = string.ascii_letters + string.digits + "~_-."
            secret = (
                "".join(rng.choices(alphabet, k=3)) + "8Q~" + "".join(rng.choices(alphabet, k=34))
            )
            tenant = Tenant(
                tenant_id=tenant_id,
                client_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                client_secret=secret,
            )
            self.tenants[tenant_id] = tenant
        tenant.domains.add(domain)
        self.domain_tenants.setdefault(domain, tenant_id)
        return tenant

    def create_mailbox(
        self, address: str, messages: int | None, tenant_id: str | None, spread: bool = False
    ) -> tuple[dict[str, Any], bool]:
        """Credentials for `address`, creating (and seeding) it first; True when created."""
        address = address.lower()
        with self.lock:
            mailbox = self.mailboxes.get(address)
            created = mailbox is None
            if mailbox is None:
                tenant = self._tenant_for(address.split("@", 1)[1], tenant_id)
                mailbox = Mailbox(address, tenant.tenant_id, self.seed)
                mailbox.seed(self.seed_messages if messages is None else messages, spread=spread)
                self.mailboxes[address] = mailbox
                self.object_ids[mailbox.object_id] = address
                rng = random.Random(f"{self.seed}:refresh:{address}")
                refresh_token = "0.AXoA" + b64url(rng.randbytes(120))
                self.refresh_tokens[refresh_token] = RefreshTokenInfo(
                    tenant.tenant_id, tenant.client_id, address
                )
                self.user_refresh_tokens[address] = refresh_token
            elif tenant_id is not None and tenant_id != mailbox.tenant_id:
                raise ValueError("mailbox already exists in another tenant")
            tenant = self.tenants[mailbox.tenant_id]
            app_credentials = {
                "tenant_id": tenant.tenant_id,
                "client_id": tenant.client_id,
                "client_secret": tenant.client_secret,
            }
            body = {
                "address": address,
                "credentials": {"type": "client_credentials", **app_credentials},
                "delegated": {
                    "type": "refresh_token",
                    **app_credentials,
                    "refresh_token": self.user_refresh_tokens[address],
                },
            }
            return body, created

    def mailbox(self, address_or_id: str) -> Mailbox | None:
        key = address_or_id.lower()
        with self.lock:
            return self.mailboxes.get(self.object_ids.get(key, key))

    def expire_access_tokens(self) -> int:
        with self.lock:
            now = time.time()
            for info in self.access_tokens.values():
                info.expires_at = min(info.expires_at, now)
            return len(self.access_tokens)

    # --- identity ----------------------------------------------------------------------

    def resolve_tenant(self, tenant: str) -> Tenant | None:
        with self.lock:
            tenant_id = self.domain_tenants.get(tenant.lower(), tenant)
            return self.tenants.get(tenant_id)

    def issue_access_token(
        self, tenant: Tenant, address: str | None, scopes: frozenset[str], issuer: str
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": GRAPH_RESOURCE,
            "iss": issuer,
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime,
            "appid": tenant.client_id,
            "app_displayname": "mailsync",
            "tid": tenant.tenant_id,
            "ver": "1.0",
            "uti": b64url(secrets.token_bytes(16)),
        }
        with self.lock:
            if address is None:
                claims["roles"] = sorted(scopes)
            else:
                mailbox = self.mailboxes[address]
                claims.update(
                    scp=" ".join(sorted(scopes)),
                    upn=address,
                    unique_name=address,
                    oid=mailbox.object_id,
                    name=mailbox.display_name,
                )
            token = unsigned_jwt(claims)
            self.access_tokens[token] = AccessTokenInfo(
                tenant.tenant_id, tenant.client_id, address, scopes, now + self.token_lifetime
            )
        return token

    def rotate_refresh_token(self, info: RefreshTokenInfo) -> str:
        # Like AAD for confidential clients: the new token is issued, the old stays valid.
        token = "0.AXoA" + b64url(secrets.token_bytes(120))
        with self.lock:
            self.refresh_tokens[token] = info
        return token

    def lookup_refresh_token(self, token: str) -> RefreshTokenInfo | None:
        with self.lock:
            return self.refresh_tokens.get(token)

    def lookup_access_token(self, token: str) -> AccessTokenInfo | None:
        with self.lock:
            return self.access_tokens.get(token)

    # --- delta state tokens ------------------------------------------------------------

    def encode_state(self, payload: dict[str, Any]) -> str:
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return self._fernet.encrypt(raw).decode().rstrip("=")

    def decode_state(self, token: str) -> dict[str, Any] | None:
        """The payload of a token this process issued, or None for anything else."""
        try:
            raw = self._fernet.decrypt(token + "=" * (-len(token) % 4))
            payload = json.loads(raw)
        except (InvalidToken, ValueError, TypeError):
            return None
        return payload if isinstance(payload, dict) else None
