"""Which mailbox a Graph notification is about, if its clientState proves Graph sent it."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, update

from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, MailboxPush
from mailsync.errors import CredentialsUnreadableError
from mailsync.providers.microsoft.subscriptions import GraphNotification
from mailsync.providers.microsoft.subscriptions import parse_notifications as parse

__all__ = ["SYNC_EVENTS", "Verified", "apply_lifecycle", "parse", "verify"]

# What a notification asks of us: sync the mailbox (a change, or `missed`), renew the
# subscription soon (reauthorizationRequired), or make a new one (subscriptionRemoved).
SYNC_EVENTS = frozenset({"missed", "subscriptionRemoved"})


@dataclass(frozen=True)
class Verified:
    mailbox: Mailbox
    notification: GraphNotification

    @property
    def wants_sync(self) -> bool:
        event = self.notification.lifecycle_event
        return event is None or event in SYNC_EVENTS


def client_state_for(mailbox_id: str, secret: str) -> str:
    """The clientState a subscription is created with: the mailbox it is for, and a secret
    (so a notification is tied to its mailbox before anything is decrypted)."""
    return f"{mailbox_id}.{secret}"


def sealed_state(box: CredentialBox, client_state: str) -> str:
    return box.seal({"client_state": client_state})


def verify(
    session: Session, box: CredentialBox, notification: GraphNotification
) -> Verified | None:
    """The mailbox the notification is for, when its clientState is that subscription's;
    None for anything else (unknown mailbox, another or no secret, a replaced subscription)."""
    state = notification.client_state or ""
    mailbox_id, dot, _ = state.partition(".")
    if not dot or len(mailbox_id) > 40:
        return None
    row = session.get(MailboxPush, mailbox_id)
    if row is None or row.provider != "microsoft" or not row.client_state_encrypted:
        return None
    try:
        expected = str(box.open(row.client_state_encrypted).get("client_state", ""))
    except CredentialsUnreadableError:
        return None
    if not expected or not hmac.compare_digest(expected.encode(), state.encode()):
        return None
    # While a subscription is being created its id is not known yet: the secret alone counts.
    if row.channel_id is not None and row.channel_id != notification.subscription_id:
        return None
    mailbox = session.get(Mailbox, mailbox_id)
    return Verified(mailbox, notification) if mailbox is not None else None


def apply_lifecycle(session: Session, verified: Verified, now: datetime) -> None:
    """reauthorizationRequired: renew at the next maintenance; subscriptionRemoved: Graph
    dropped it, so it has expired and the next maintenance makes a new one."""
    event = verified.notification.lifecycle_event
    values: dict[str, object] = {}
    if event == "reauthorizationRequired":
        values = {"renewed_at": None}
    elif event == "subscriptionRemoved":
        values = {"expires_at": now, "renewed_at": None, "last_error": "removed by Graph"}
    if values:
        session.exec(  # type: ignore[call-overload]
            update(MailboxPush)
            .where(col(MailboxPush.mailbox_id) == verified.mailbox.id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
