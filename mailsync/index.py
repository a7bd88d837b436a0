"""The searchable message index: applies provider pages to the database, idempotently."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, delete, select

from mailsync.models import Message, as_utc
from mailsync.providers.base import MessageRecord

_CHUNK = 500  # keeps IN (...) lists well under every database's parameter limit


@dataclass
class Counts:
    added: int = 0
    updated: int = 0
    deleted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "messages_added": self.added,
            "messages_updated": self.updated,
            "messages_deleted": self.deleted,
        }

    def __iadd__(self, other: Counts) -> Counts:
        self.added += other.added
        self.updated += other.updated
        self.deleted += other.deleted
        return self


def _fields(record: MessageRecord) -> dict[str, Any]:
    return {
        "thread_id": record.thread_id,
        "sender": record.sender,
        "to": list(record.to),
        "cc": list(record.cc),
        "subject": record.subject,
        "snippet": record.snippet,
        "date": record.date,
        "labels": list(record.labels),
        "size": record.size,
    }


def _changed(row: Message, fields: dict[str, Any]) -> bool:
    for key, value in fields.items():
        current = getattr(row, key)
        if key == "date":  # SQLite returns naive datetimes; compare both in UTC
            current, value = as_utc(current), as_utc(value)
        if current != value:
            return True
    return False


def upsert(session: Session, mailbox_id: str, records: Iterable[MessageRecord]) -> Counts:
    counts = Counts()
    by_id = {r.provider_message_id: r for r in records}  # last one wins within a page
    ids = list(by_id)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        existing = {
            m.provider_message_id: m
            for m in session.exec(
                select(Message).where(
                    Message.mailbox_id == mailbox_id, col(Message.provider_message_id).in_(chunk)
                )
            )
        }
        for pid in chunk:
            fields = _fields(by_id[pid])
            row = existing.get(pid)
            if row is None:
                session.add(Message(mailbox_id=mailbox_id, provider_message_id=pid, **fields))
                counts.added += 1
            elif _changed(row, fields):
                for k, v in fields.items():
                    setattr(row, k, v)
                session.add(row)
                counts.updated += 1
    session.flush()
    return counts


def remove(session: Session, mailbox_id: str, provider_ids: Iterable[str]) -> int:
    ids = list(dict.fromkeys(provider_ids))
    deleted = 0
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        result = session.exec(  # type: ignore[call-overload]
            delete(Message).where(
                col(Message.mailbox_id) == mailbox_id,
                col(Message.provider_message_id).in_(chunk),
            )
        )
        deleted += result.rowcount or 0
    return deleted


def remove_unseen(session: Session, mailbox_id: str, seen: set[str]) -> int:
    """After a full listing: drop what the provider no longer has."""
    stored = session.exec(
        select(Message.provider_message_id).where(Message.mailbox_id == mailbox_id)
    ).all()
    return remove(session, mailbox_id, (pid for pid in stored if pid not in seen))


def message_ids(session: Session, mailbox_id: str) -> set[str]:
    return set(
        session.exec(
            select(Message.provider_message_id).where(Message.mailbox_id == mailbox_id)
        ).all()
    )
