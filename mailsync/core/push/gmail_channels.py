"""Gmail watches of the connected Gmail mailboxes: opened, renewed daily, stopped.

`maintain` runs in every refresh round with the Microsoft subscriptions' (channels.py): a
Gmail mailbox gets `users.watch` on MAILSYNC_GMAIL_PUBSUB_TOPIC when it has none, and again
once its watch is older than MAILSYNC_GMAIL_WATCH_RENEW_SECONDS (a day; watches lapse after
7). A failure marks its push `failing` (polled as before) and is tried again next round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlmodel import col, select

from mailsync.core.push.graph_channels import MaintenanceReport
from mailsync.core.push.state import PushStatus
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, MailboxPush, MailboxStatus, as_utc, utcnow
from mailsync.errors import MailsyncError
from mailsync.providers.base import ProviderError
from mailsync.providers.gmail.provider import GmailProvider
from mailsync.settings import Settings

log = logging.getLogger(__name__)

PROVIDER = "gmail"
PUSH_PATH = "/v1/push/gmail"

Opener = Callable[[Mailbox, CredentialBox, Settings], GmailProvider]


def open_provider(mailbox: Mailbox, box: CredentialBox, settings: Settings) -> GmailProvider:
    auth_state = mailbox.auth_state_encrypted
    return GmailProvider(
        mailbox.address,
        box.open(mailbox.credentials_encrypted),
        settings.provider_endpoints,
        auth_state=box.open(auth_state).get("state") if auth_state else None,
    )


def _due(row: MailboxPush | None, now: datetime, renew_every: timedelta) -> bool:
    if row is None or row.status != PushStatus.active or row.renewed_at is None:
        return True
    renewed, expires = as_utc(row.renewed_at), as_utc(row.expires_at)
    assert renewed is not None
    return now - renewed >= renew_every or expires is None or expires <= now


def maintain(
    settings: Settings,
    now: Callable[[], datetime] = utcnow,
    opener: Opener = open_provider,
    workspaces: list[str] | None = None,
) -> MaintenanceReport:
    """Watch (again) every Gmail mailbox that needs it (of `workspaces` only, if given)."""
    report = MaintenanceReport()
    topic = settings.gmail_pubsub_topic
    if settings.push_base_url is None or topic is None:
        return report
    renew_every = timedelta(seconds=settings.gmail_watch_renew_seconds)
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
        due = [m for m in mailboxes if _due(session.get(MailboxPush, m.id), now(), renew_every)]
        renewing = {m.id for m in due if session.get(MailboxPush, m.id) is not None}
        session.expunge_all()
    for mailbox in due:
        try:
            ensure(settings, box, mailbox, now, opener)
        except (ProviderError, MailsyncError) as exc:
            _store(url, mailbox, status=PushStatus.failing, error=f"{type(exc).__name__}: {exc}")
            log.warning("push for gmail %s not opened: %s", mailbox.address, exc)
            report.failed.append(mailbox.id)
            continue
        (report.renewed if mailbox.id in renewing else report.opened).append(mailbox.id)
    return report


def ensure(
    settings: Settings,
    box: CredentialBox,
    mailbox: Mailbox,
    now: Callable[[], datetime] = utcnow,
    opener: Opener = open_provider,
) -> None:
    """users.watch the mailbox on the configured topic (a renewal is the same call)."""
    topic = settings.gmail_pubsub_topic
    assert topic is not None
    provider = opener(mailbox, box, settings)
    try:
        watch = provider.watch(topic)
    finally:
        provider.close()
    _store(
        settings.resolved_database_url,
        mailbox,
        status=PushStatus.active,
        expires=watch.expires_at,
        renewed=now(),
        history_id=watch.history_id,
    )


def stop(settings: Settings, mailbox: Mailbox, opener: Opener = open_provider) -> bool:
    """users.stop (disconnect) and push off; True when the mailbox had a watch."""
    url = settings.resolved_database_url
    with session_scope(url) as session:
        row = session.get(MailboxPush, mailbox.id)
        if row is None or row.status == PushStatus.off:
            return False
        row.status, row.expires_at, row.renewed_at = PushStatus.off.value, None, None
        session.add(row)
    provider = opener(mailbox, CredentialBox(settings.fernet_key()), settings)
    try:
        provider.stop_watch()
    finally:
        provider.close()
    return True


def _store(
    url: str,
    mailbox: Mailbox,
    *,
    status: PushStatus,
    error: str | None = None,
    expires: datetime | None = None,
    renewed: datetime | None = None,
    history_id: str | None = None,
) -> None:
    with session_scope(url) as session:
        row = session.get(MailboxPush, mailbox.id) or MailboxPush(
            mailbox_id=mailbox.id, provider=PROVIDER
        )
        row.status, row.last_error = status.value, error[:300] if error else None
        if status is PushStatus.active:
            row.expires_at, row.renewed_at, row.history_id = expires, renewed, history_id
        session.add(row)
