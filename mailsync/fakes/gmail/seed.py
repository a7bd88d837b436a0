"""The fake Gmail's seed data: who writes, what about, and each message's details from its seed."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailsync.fakes.gmail.message import FakeMessage

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

PEOPLE = (
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
WORDS = [
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
SEED_START = datetime(2024, 1, 1, tzinfo=UTC)
SEED_SPAN_S = 180 * 24 * 3600


def format_address(name: str, addr: str) -> str:
    if not name:
        return addr
    if "," in name or '"' in name:
        return '"{}" <{}>'.format(name.replace('"', '\\"'), addr)
    return f"{name} <{addr}>"


def subject_of(thread_seed: int) -> str:
    rng = random.Random(thread_seed ^ 0x5B1EC7)
    return " ".join(rng.sample(WORDS, rng.randint(2, 5))).capitalize()


def details(msg: FakeMessage) -> tuple[list[str], list[tuple[str, str]], str, int]:
    """Labels, headers, body and size of `msg`, a pure function of its seed and owner."""
    rng = random.Random(msg.seed)
    sent = rng.random() < 0.15
    me = ("", msg.owner)
    others = [p for p in PEOPLE if p[1] != msg.owner]
    sender = me if sent else rng.choice(others)
    to = (
        rng.sample(others, rng.randint(1, 3))
        if sent
        else [me, *rng.sample(others, rng.randint(0, 2))]
    )
    cc = rng.sample(others, rng.randint(1, 2)) if rng.random() < 0.3 else []
    subject = ("Re: " if msg.reply else "") + subject_of(msg.thread_seed)
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
    words = [rng.choice(WORDS) for _ in range(rng.randint(12, 40))]
    body = " ".join(words).capitalize() + ".\n"
    date = datetime.fromtimestamp(msg.internal_date / 1000, tz=UTC)
    headers = [
        ("From", format_address(*sender)),
        ("To", ", ".join(format_address(*p) for p in to)),
    ]
    if cc:
        headers.append(("Cc", ", ".join(format_address(*p) for p in cc)))
    headers += [
        ("Subject", subject),
        ("Date", format_datetime(date)),
        ("Message-ID", f"<{msg.id}.{rng.getrandbits(32):x}@mail.example>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'text/plain; charset="UTF-8"'),
    ]
    return labels, headers, body, rng.randint(2_000, 250_000)
