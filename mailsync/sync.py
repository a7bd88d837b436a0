"""Syncs one mailbox: chooses full or incremental, applies provider pages, stores the cursor."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from mailsync import index
from mailsync.crypto import CredentialBox
from mailsync.db import session_scope
from mailsync.models import Mailbox, SyncMode, utcnow
from mailsync.providers.base import CursorExpiredError, MailProvider, Page, ProviderEndpoints
from mailsync.providers.registry import open_provider

log = logging.getLogger(__name__)

ProviderFactory = Callable[[str, str, dict[str, Any], ProviderEndpoints], MailProvider]


class MailboxGoneError(Exception):
    """The mailbox was disconnected while a job for it was queued."""


@dataclass
class MailboxResult:
    mailbox_id: str
    provider: str
    address: str
    requested_mode: str
    performed_mode: str
    reason: str | None = None  # why performed differs from requested
    counts: index.Counts = field(default_factory=index.Counts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mailbox_id": self.mailbox_id,
            "provider": self.provider,
            "address": self.address,
            "requested_mode": self.requested_mode,
            "performed_mode": self.performed_mode,
            "reason": self.reason,
            "counts": self.counts.as_dict(),
        }


def sync_mailbox(
    database_url: str,
    mailbox_id: str,
    mode: str,
    *,
    box: CredentialBox,
    endpoints: ProviderEndpoints,
    factory: ProviderFactory = open_provider,
) -> MailboxResult:
    with session_scope(database_url) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        if mailbox is None:
            raise MailboxGoneError(f"mailbox {mailbox_id} is no longer connected")
        credentials = box.open(mailbox.credentials_encrypted)
        provider_name, address, cursor = mailbox.provider, mailbox.address, mailbox.cursor

    result = MailboxResult(mailbox_id, provider_name, address, mode, mode)
    provider = factory(provider_name, address, credentials, endpoints)
    try:
        if mode == SyncMode.incremental and cursor is None:
            result.performed_mode, result.reason = SyncMode.full, "initial_sync"
        elif mode == SyncMode.incremental:
            try:
                _apply_incremental(database_url, mailbox_id, provider, cursor or "", result)
                return result
            except CursorExpiredError:
                log.info("cursor of mailbox %s expired; running a full sync", mailbox_id)
                result.performed_mode, result.reason = SyncMode.full, "cursor_reset"
        _apply_full(database_url, mailbox_id, provider, result)
        return result
    finally:
        provider.close()


def _store_cursor(session: Session, mailbox_id: str, cursor: str | None) -> None:
    mailbox = session.get(Mailbox, mailbox_id)
    if mailbox is None:
        raise MailboxGoneError(f"mailbox {mailbox_id} was disconnected during the sync")
    mailbox.cursor = cursor
    mailbox.last_synced_at = utcnow()
    session.add(mailbox)


def _apply_incremental(
    database_url: str, mailbox_id: str, provider: MailProvider, cursor: str, result: MailboxResult
) -> None:
    # Pages are applied as they come: upserts and deletions are idempotent, so a sync that
    # dies half-way and is retried from the old cursor converges to the same index.
    final: str | None = None
    page: Page
    for page in provider.incremental_sync(cursor):
        with session_scope(database_url) as session:
            result.counts += index.upsert(session, mailbox_id, page.upserts)
            result.counts.deleted += index.remove(session, mailbox_id, page.deletions)
        final = page.cursor or final
    with session_scope(database_url) as session:
        _store_cursor(session, mailbox_id, final or cursor)


def _apply_full(
    database_url: str, mailbox_id: str, provider: MailProvider, result: MailboxResult
) -> None:
    seen: set[str] = set()
    final: str | None = None
    for page in provider.full_sync():
        with session_scope(database_url) as session:
            result.counts += index.upsert(session, mailbox_id, page.upserts)
        seen.update(r.provider_message_id for r in page.upserts)
        final = page.cursor or final
    with session_scope(database_url) as session:
        result.counts.deleted += index.remove_unseen(session, mailbox_id, seen)
        _store_cursor(session, mailbox_id, final)
