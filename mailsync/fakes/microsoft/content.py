"""Made-up but plausible message properties, drawn from a seed so a mailbox is reproducible."""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

# What $select may name on a message; Graph refuses anything else with 400.
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
OUTGOING_FOLDERS = ("sentitems", "drafts")

# Seeded messages are dated relative to a fixed instant so a seed always yields the same mailbox.
SEED_EPOCH = datetime(2025, 1, 15, 9, 0, tzinfo=UTC)

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


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def person(rng: random.Random) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    domain = rng.choice(_DOMAINS)
    address = f"{first}.{last}".lower().replace("-", "") + f"@{domain}"
    return {"emailAddress": {"name": f"{first} {last}", "address": address}}


def thread(thread_seed: int) -> tuple[str, str]:
    """(conversationId, base subject) of the conversation a seed started."""
    rng = random.Random(thread_seed)
    template = rng.choice(_TEMPLATES)
    subject = template.format(
        topic=rng.choice(_TOPICS),
        number=rng.randint(10000, 99999),
        weekday=rng.choice(_WEEKDAYS),
    )
    return "AAQkAD" + b64url(rng.randbytes(30)), subject


def draw(message: Message, owner: dict[str, Any]) -> dict[str, Any]:
    """Graph properties of a message, from its seed alone; `owner` is the mailbox's user."""
    rng = random.Random(message.seed)
    conversation_id, base = thread(message.thread_seed)
    subject = base if message.thread_seed == message.seed else f"RE: {base}"
    outgoing = message.origin_key in OUTGOING_FOLDERS
    sender = owner if outgoing else person(rng)
    to = [person(rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    if not outgoing:
        to.insert(0, owner)
    cc = [person(rng) for _ in range(rng.choice([0, 0, 0, 1, 2]))]
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
