"""A mailbox's push state as the API shows it: active, expired, failing or off."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlmodel import Session, col, select

from mailsync.db.tables import MailboxPush, as_utc, iso


class PushStatus(StrEnum):
    active = "active"  # the provider pushes this mailbox's changes to us
    expired = "expired"  # the watch or subscription lapsed (or the provider removed it)
    failing = "failing"  # opening or renewing it failed (last_error says why)
    off = "off"  # push is not configured, or was stopped


@dataclass(frozen=True)
class PushState:
    mailbox_id: str
    push: PushStatus
    push_expires_at: datetime | None = None
    last_notification_at: datetime | None = None
    last_error: str | None = None

    @property
    def working(self) -> bool:
        """Push can be trusted to report changes: the mailbox need only be polled rarely."""
        return self.push is PushStatus.active

    def public_view(self) -> dict[str, str | None]:
        """The fields `GET /v1/mailboxes/{id}` shows."""
        return {
            "push": self.push.value,
            "push_expires_at": iso(self.push_expires_at),
            "last_notification_at": iso(self.last_notification_at),
        }


def state_of(row: MailboxPush | None, mailbox_id: str, now: datetime) -> PushState:
    if row is None or row.status == PushStatus.off:
        return PushState(
            mailbox_id, PushStatus.off, None, as_utc(row.last_notification_at) if row else None
        )
    expires = as_utc(row.expires_at)
    status = PushStatus(row.status) if row.status in PushStatus.__members__ else PushStatus.failing
    if status is PushStatus.active and (expires is None or expires <= now):
        status = PushStatus.expired
    return PushState(mailbox_id, status, expires, as_utc(row.last_notification_at), row.last_error)


def push_state(session: Session, mailbox_id: str, now: datetime) -> PushState:
    """One mailbox's push state at `now`."""
    return state_of(session.get(MailboxPush, mailbox_id), mailbox_id, now)


def push_states(
    session: Session, mailbox_ids: Iterable[str], now: datetime
) -> dict[str, PushState]:
    """Several mailboxes' push states at `now`, by mailbox id (off where nothing is known)."""
    ids = list(mailbox_ids)
    rows = {
        r.mailbox_id: r
        for r in session.exec(select(MailboxPush).where(col(MailboxPush.mailbox_id).in_(ids)))
    }
    return {m: state_of(rows.get(m), m, now) for m in ids}
