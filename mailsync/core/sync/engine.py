"""Syncs one mailbox: chooses full or incremental, applies provider pages, stores the cursor.

A full sync builds the next index generation page by page, saving the provider's checkpoint
with every page in the same transaction, and switches generations at the end; a sync that
dies is resumed from its checkpoint by the next full sync of that mailbox (within an hour).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, update

from mailsync.core.mailboxes import mark_reauth_required
from mailsync.core.sync import index
from mailsync.core.sync.readahead import read_ahead
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, MailboxStatus, SyncMode, as_utc, utcnow
from mailsync.errors import (
    CredentialsChangedError,
    MailboxGoneError,
    ReauthRequiredError,
    TurnLapsedError,
)
from mailsync.providers.base import (
    CursorExpiredError,
    MailProvider,
    ProviderEndpoints,
    ProviderOptions,
)
from mailsync.providers.registry import open_provider

log = logging.getLogger(__name__)

ProviderFactory = Callable[..., MailProvider]
# Called after every applied page with (messages processed so far, provider's total estimate).
Progress = Callable[[int, int | None], None]
# True while the sync may still write: it holds its mailbox's turn (runtime.mailbox_turn).
Fence = Callable[[], bool]
RESUME_WITHIN = timedelta(hours=1)


@dataclass
class MailboxResult:
    mailbox_id: str
    provider: str
    address: str
    requested_mode: str
    performed_mode: str
    reason: str | None = None  # why performed differs from requested, e.g. cursor_reset
    resumed: bool = False
    counts: index.Counts = field(default_factory=index.Counts)
    # The provider's cursor before and after (for the run's summary; not in as_dict, which
    # is what the job record and the API show).
    cursor_before: str | None = None
    cursor_after: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mailbox_id": self.mailbox_id,
            "provider": self.provider,
            "address": self.address,
            "requested_mode": self.requested_mode,
            "performed_mode": self.performed_mode,
            "reason": self.reason,
            "resumed": self.resumed,
            "counts": self.counts.as_dict(),
        }


def _mailbox(session: Session, mailbox_id: str) -> Mailbox:
    mailbox = session.get(Mailbox, mailbox_id)
    if mailbox is None or mailbox.status == MailboxStatus.disconnected:
        raise MailboxGoneError(f"mailbox {mailbox_id} is no longer connected")
    return mailbox


def _held(session: Session, mailbox_id: str, credentials_version: int) -> Mailbox:
    """The mailbox, first thing in a write's transaction, if it still has the credentials the
    sync read. The no-op UPDATE locks the row until the write commits, so a re-connect lands
    either before it (and the write is refused) or after it (and clears what it wrote)."""
    held = session.exec(  # type: ignore[call-overload]
        update(Mailbox)
        .where(
            col(Mailbox.id) == mailbox_id,
            col(Mailbox.credentials_version) == credentials_version,
        )
        .values(credentials_version=credentials_version)
        .execution_options(synchronize_session=False)
    )
    mailbox = _mailbox(session, mailbox_id)
    if held.rowcount != 1:
        raise CredentialsChangedError(
            f"mailbox {mailbox_id} was re-connected while it synced; stopped"
        )
    return mailbox


def sync_mailbox(
    database_url: str,
    mailbox_id: str,
    mode: str,
    *,
    box: CredentialBox,
    endpoints: ProviderEndpoints,
    factory: ProviderFactory = open_provider,
    options: ProviderOptions | None = None,
    progress: Progress | None = None,
    fence: Fence | None = None,
) -> MailboxResult:
    """Sync the mailbox. `fence`: asked before every write; once it says no, the sync stops
    with TurnLapsedError."""
    with session_scope(database_url) as session:
        mailbox = _mailbox(session, mailbox_id)
        if mailbox.status == MailboxStatus.reauth_required or not mailbox.credentials_encrypted:
            # Queued before its grant was refused: asking the provider again cannot help.
            raise ReauthRequiredError(
                f"mailbox {mailbox_id} needs re-authorization (POST /v1/mailboxes/connect "
                "with its mailbox_id)"
            )
        credentials = box.open(mailbox.credentials_encrypted)
        auth_state = box.open(mailbox.auth_state_encrypted) if mailbox.auth_state_encrypted else {}
        provider_name, address, cursor = mailbox.provider, mailbox.address, mailbox.cursor
        credentials_version = mailbox.credentials_version

    result = MailboxResult(mailbox_id, provider_name, address, mode, mode, cursor_before=cursor)
    provider = factory(
        provider_name,
        address,
        credentials,
        endpoints,
        auth_state=auth_state.get("state"),
        options=options,
    )
    run = _Run(
        database_url,
        mailbox_id,
        provider,
        result,
        progress or (lambda _n, _t: None),
        fence or (lambda: True),
        credentials_version,
    )
    try:
        if mode == SyncMode.incremental and cursor is None:
            result.performed_mode, result.reason = SyncMode.full, "initial_sync"
        elif mode == SyncMode.incremental:
            try:
                run.incremental(cursor or "")
                return result
            except CursorExpiredError as exc:
                log.info("cursor of mailbox %s expired (%s); running a full sync", mailbox_id, exc)
                result.performed_mode, result.reason = SyncMode.full, "cursor_reset"
        run.full()
        return result
    except ReauthRequiredError as exc:
        # The grant is gone: say so once (status, webhook event), and skip it until reconnected.
        with session_scope(database_url) as session:
            mark_reauth_required(session, mailbox_id, credentials_version, exc.public_message)
        raise
    finally:
        run.keep_auth_state(box)
        provider.close()


@dataclass
class _Run:
    database_url: str
    mailbox_id: str
    provider: MailProvider
    result: MailboxResult
    progress: Progress
    fence: Fence
    credentials_version: int
    processed: int = 0

    def _writes(self) -> None:
        """Before every write: a sync that lost its turn writes nothing more."""
        if not self.fence():
            raise TurnLapsedError(
                f"the turn of mailbox {self.mailbox_id} lapsed while it synced; stopped"
            )

    def _mailbox(self, session: Session) -> Mailbox:
        return _held(session, self.mailbox_id, self.credentials_version)

    def incremental(self, cursor: str) -> None:
        # Pages are applied as they come: upserts and deletions are idempotent, so a sync that
        # dies half-way and is retried from the old cursor converges to the same index.
        final: str | None = None
        for page in read_ahead(self.provider.incremental_sync(cursor)):
            self._writes()
            with session_scope(self.database_url, replayable=True) as session:
                live = self._mailbox(session).generation
                self.result.counts += index.upsert(
                    session, self.mailbox_id, page.upserts, live, add_labels=page.folder_labels
                )
                self.result.counts.deleted += index.remove(
                    session, self.mailbox_id, page.deletions, live
                )
                self.result.counts.deleted += index.remove_from_folders(
                    session, self.mailbox_id, page.removals, live
                )
            final = page.cursor or final
            changes = len(page.upserts) + len(page.deletions) + len(page.removals)
            self._advance(changes, page.total_estimate)
        self._writes()
        with session_scope(self.database_url) as session:
            self._finish(self._mailbox(session), final or cursor)

    def full(self) -> None:
        self._writes()
        with session_scope(self.database_url) as session:
            mailbox = self._mailbox(session)
            checkpoint = self._resumable(mailbox)
            if checkpoint is None:
                # A generation no other build used: one still running on the old number
                # (its turn lapsed) fails its next page's fence instead of writing into ours.
                start = max(mailbox.generation, mailbox.building_generation or 0)
                if mailbox.building_generation is not None:
                    index.discard(session, mailbox.id, mailbox.building_generation)
                mailbox.building_generation = start + 1
                mailbox.checkpoint = mailbox.checkpoint_at = None
            building, live = mailbox.building_generation, mailbox.generation
            assert building is not None
            session.add(mailbox)
        self.result.resumed = checkpoint is not None
        try:
            self._build(checkpoint, building, live)
        except CursorExpiredError:
            if checkpoint is None:
                raise
            # The provider cannot continue from it (page tokens expire too): start over.
            log.info("checkpoint of mailbox %s unusable; rebuilding from scratch", self.mailbox_id)
            with session_scope(self.database_url) as session:
                self._mailbox(session)
                index.discard(session, self.mailbox_id, building)
            self.result.resumed = False
            self._build(None, building, live)

    def _build(self, checkpoint: str | None, building: int, live: int) -> None:
        final: str | None = None
        for page in read_ahead(self.provider.full_sync(checkpoint)):
            # The page and the checkpoint after it are stored together: a resumed sync never
            # skips a page nor applies one twice.
            self._writes()
            with session_scope(self.database_url, replayable=True) as session:
                self._mailbox(session)
                self.result.counts += index.upsert(
                    session,
                    self.mailbox_id,
                    page.upserts,
                    building,
                    compare_to=live,
                    add_labels=page.folder_labels,
                )
                index.keep_checkpoint(
                    session, self.mailbox_id, page.checkpoint, building=building, live=live
                )
            final = page.cursor or final
            self._advance(len(page.upserts), page.total_estimate)
        self._writes()
        with session_scope(self.database_url) as session:
            mailbox = self._mailbox(session)
            self.result.counts.deleted += index.switch(session, mailbox, building, live=live)
            self._finish(mailbox, final)

    def _resumable(self, mailbox: Mailbox) -> str | None:
        saved = as_utc(mailbox.checkpoint_at)
        if mailbox.building_generation is None or not mailbox.checkpoint or saved is None:
            return None
        return mailbox.checkpoint if utcnow() - saved < RESUME_WITHIN else None

    def _advance(self, count: int, estimate: int | None) -> None:
        self.processed += count
        self.progress(self.processed, estimate)

    def _finish(self, mailbox: Mailbox, cursor: str | None) -> None:
        mailbox.cursor = self.result.cursor_after = cursor
        mailbox.last_synced_at = utcnow()
        session = Session.object_session(mailbox)
        assert session is not None
        session.add(mailbox)

    def keep_auth_state(self, box: CredentialBox) -> None:
        state = self.provider.auth_state()
        if state is None or not self.fence():
            return
        # Only over the credentials it belongs to: an old account's token cache kept after a
        # re-connect would go on syncing the old account.
        with session_scope(self.database_url) as session:
            session.exec(  # type: ignore[call-overload]
                update(Mailbox)
                .where(
                    col(Mailbox.id) == self.mailbox_id,
                    col(Mailbox.credentials_version) == self.credentials_version,
                )
                .values(auth_state_encrypted=box.seal({"state": state}))
                .execution_options(synchronize_session=False)
            )
