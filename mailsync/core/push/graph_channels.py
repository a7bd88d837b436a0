"""Graph subscriptions of the connected Microsoft mailboxes: opened, renewed early, stopped.

`maintain` runs in every refresh round (flows/refresh.py): a mailbox without a live
subscription gets one, one with less than MAILSYNC_MICROSOFT_SUBSCRIPTION_RENEW_BEFORE_MINUTES
left (or whose reauthorization Graph asked for) is renewed, so a subscription never reaches
Graph's 4,230-minute end. A failure marks the mailbox's push `failing` (polled as before) and
is tried again next round. Each mailbox is its own transaction; the Graph calls run outside
any, since creating a subscription waits for Graph's handshake with our API.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import col, select

from mailsync.core.push.graph_notifications import client_state_for, sealed_state
from mailsync.core.push.state import PushStatus
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, MailboxPush, MailboxStatus, as_utc, utcnow
from mailsync.errors import MailsyncError
from mailsync.providers.base import ProviderError
from mailsync.providers.microsoft.subscriptions import GraphSubscriptions
from mailsync.settings import Settings

log = logging.getLogger(__name__)

PROVIDER = "microsoft"
NOTIFY_PATH = "/v1/push/microsoft"
LIFECYCLE_PATH = "/v1/push/microsoft/lifecycle"


@dataclass
class MaintenanceReport:
    opened: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


Opener = Callable[[Mailbox, CredentialBox, Settings], GraphSubscriptions]


def open_client(mailbox: Mailbox, box: CredentialBox, settings: Settings) -> GraphSubscriptions:
    auth_state = mailbox.auth_state_encrypted
    return GraphSubscriptions(
        mailbox.address,
        box.open(mailbox.credentials_encrypted),
        settings.provider_endpoints,
        auth_state=box.open(auth_state).get("state") if auth_state else None,
    )


def _due(row: MailboxPush | None, now: datetime, renew_before: timedelta) -> bool:
    if row is None or row.channel_id is None or row.renewed_at is None:
        return True
    expires = as_utc(row.expires_at)
    return row.status != PushStatus.active or expires is None or expires - now <= renew_before


def maintain(
    settings: Settings,
    now: Callable[[], datetime] = utcnow,
    opener: Opener = open_client,
    workspaces: list[str] | None = None,
) -> MaintenanceReport:
    """Open or renew the subscription of every Microsoft mailbox that needs it (of
    `workspaces` only, if given)."""
    report = MaintenanceReport()
    base = settings.push_base_url
    if base is None:
        return report
    renew_before = timedelta(minutes=settings.microsoft_subscription_renew_before_minutes)
    box = CredentialBox(settings.fernet_key())
    url = settings.resolved_database_url
    with session_scope(url) as session:
        # A mailbox waiting for re-authorization, or disconnected, has no grant to push with.
        query = select(Mailbox).where(
            Mailbox.provider == PROVIDER, col(Mailbox.status) == MailboxStatus.active.value
        )
        if workspaces is not None:
            query = query.where(col(Mailbox.workspace_id).in_(workspaces))
        mailboxes = list(session.exec(query))
        rows = {m.id: session.get(MailboxPush, m.id) for m in mailboxes}
        due = [m for m in mailboxes if _due(rows[m.id], now(), renew_before)]
        session.expunge_all()
    for mailbox in due:
        try:
            renewed = ensure(settings, box, mailbox, now, opener)
        except (ProviderError, MailsyncError) as exc:
            _failed(url, mailbox, f"{type(exc).__name__}: {exc}"[:300])
            log.warning("push for microsoft %s not opened: %s", mailbox.address, exc)
            report.failed.append(mailbox.id)
            continue
        (report.renewed if renewed else report.opened).append(mailbox.id)
    return report


def ensure(
    settings: Settings,
    box: CredentialBox,
    mailbox: Mailbox,
    now: Callable[[], datetime] = utcnow,
    opener: Opener = open_client,
) -> bool:
    """Renew the mailbox's subscription, or make one when it has none Graph still knows;
    True when renewed."""
    base = settings.push_base_url
    assert base is not None
    url = settings.resolved_database_url
    with session_scope(url) as session:
        row = session.get(MailboxPush, mailbox.id)
        channel = row.channel_id if row is not None else None
        expires = as_utc(row.expires_at) if row is not None else None
        live = channel is not None and expires is not None and expires > now()
    lifetime = timedelta(minutes=settings.microsoft_subscription_minutes)
    client = opener(mailbox, box, settings)
    try:
        if live and channel is not None:
            try:
                subscription = client.renew(channel, now() + lifetime)
                _store(url, mailbox, subscription.id, subscription.expires_at, now(), None)
                return True
            except ProviderError as exc:
                if "404" not in str(exc):
                    raise
        # A new secret for a new subscription: notifications of an old one no longer verify.
        client_state = client_state_for(mailbox.id, secrets.token_urlsafe(48))
        with session_scope(url) as session:
            row = session.get(MailboxPush, mailbox.id) or MailboxPush(
                mailbox_id=mailbox.id, provider=PROVIDER
            )
            row.client_state_encrypted = sealed_state(box, client_state)
            row.channel_id = None
            session.add(row)
        subscription = client.create(
            base + NOTIFY_PATH, base + LIFECYCLE_PATH, client_state, now() + lifetime
        )
        _store(url, mailbox, subscription.id, subscription.expires_at, now(), None)
        return False
    finally:
        client.close()


def stop(settings: Settings, mailbox: Mailbox, opener: Opener = open_client) -> bool:
    """Delete the mailbox's subscription at Graph (disconnect) and turn its push off; True
    when there was one. Its notifications no longer verify from here on."""
    url = settings.resolved_database_url
    with session_scope(url) as session:
        row = session.get(MailboxPush, mailbox.id)
        if row is None:
            return False
        channel = row.channel_id
        row.status, row.channel_id, row.client_state_encrypted = PushStatus.off.value, None, None
        row.expires_at = row.renewed_at = None
        session.add(row)
    if channel is None:
        return False
    client = opener(mailbox, CredentialBox(settings.fernet_key()), settings)
    try:
        client.delete(channel)
    finally:
        client.close()
    return True


def _store(
    url: str,
    mailbox: Mailbox,
    channel: str,
    expires: datetime,
    now: datetime,
    error: str | None,
) -> None:
    with session_scope(url) as session:
        row = session.get(MailboxPush, mailbox.id) or MailboxPush(
            mailbox_id=mailbox.id, provider=PROVIDER
        )
        row.channel_id, row.expires_at, row.renewed_at = channel, expires, now
        row.status, row.last_error = PushStatus.active.value, error
        session.add(row)


def _failed(url: str, mailbox: Mailbox, error: str) -> None:
    with session_scope(url) as session:
        row = session.get(MailboxPush, mailbox.id) or MailboxPush(
            mailbox_id=mailbox.id, provider=PROVIDER
        )
        row.status, row.last_error = PushStatus.failing.value, error
        session.add(row)
