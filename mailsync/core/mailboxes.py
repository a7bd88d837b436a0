"""A workspace's mailboxes as the API shows them, their disconnection, and their status changes
(re-authorization needed, each job's outcome): the state behind /v1/mailboxes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, delete, func, select, update

from mailsync.core.push.state import PushState, push_state, push_states
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import (
    JobStatus,
    Mailbox,
    MailboxStatus,
    Message,
    SyncJob,
    as_utc,
    iso,
    utcnow,
)
from mailsync.errors import MailboxSyncingError
from mailsync.providers.base import ProviderEndpoints
from mailsync.providers.registry import revoke_grant
from mailsync.webhooks import outbox
from mailsync.webhooks.store import MAILBOX_REAUTH_REQUIRED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MailboxError:
    code: str
    message: str | None


@dataclass(frozen=True)
class MailboxView:
    """One mailbox as GET /v1/mailboxes shows it (mailsync/api/mailbox_schemas.py)."""

    id: str
    provider: str
    address: str
    status: str
    connected_at: str | None
    last_synced_at: str | None
    last_job_id: str | None
    last_error: MailboxError | None
    message_count: int
    lag_seconds: int | None  # now minus the last successful sync; None before the first
    push: str  # active | expired | failing | off (core/push/state.py)
    push_expires_at: str | None
    last_notification_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _view(mailbox: Mailbox, message_count: int, push: PushState, now: datetime) -> MailboxView:
    synced = as_utc(mailbox.last_synced_at)
    error = (
        MailboxError(mailbox.last_error_code, mailbox.last_error_message)
        if mailbox.last_error_code
        else None
    )
    return MailboxView(
        id=mailbox.id,
        provider=mailbox.provider,
        address=mailbox.address,
        status=mailbox.status,
        connected_at=iso(mailbox.connected_at or mailbox.created_at),
        last_synced_at=iso(synced),
        last_job_id=mailbox.last_job_id,
        last_error=error,
        message_count=message_count,
        lag_seconds=max(0, int((now - synced).total_seconds())) if synced else None,
        **push.public_view(),  # type: ignore[arg-type]
    )


def _counts(session: Session, mailbox_ids: list[str]) -> dict[str, int]:
    """Messages in each mailbox's live generation (what a search can find)."""
    if not mailbox_ids:
        return {}
    query = (
        select(Message.mailbox_id, func.count())
        .join(
            Mailbox,
            sa.and_(
                col(Message.mailbox_id) == col(Mailbox.id),
                col(Message.generation) == col(Mailbox.generation),
            ),
        )
        .where(col(Message.mailbox_id).in_(mailbox_ids))
        .group_by(col(Message.mailbox_id))
    )
    return {mailbox_id: int(count) for mailbox_id, count in session.exec(query)}


def list_mailboxes(
    session: Session, workspace_id: str, now: datetime | None = None
) -> list[MailboxView]:
    """Every mailbox of the workspace, disconnected ones included, oldest first."""
    now = now or utcnow()
    rows = list(
        session.exec(
            select(Mailbox)
            .where(Mailbox.workspace_id == workspace_id)
            .order_by(col(Mailbox.created_at), col(Mailbox.id))
        )
    )
    ids = [m.id for m in rows]
    counts, pushes = _counts(session, ids), push_states(session, ids, now)
    return [_view(m, counts.get(m.id, 0), pushes[m.id], now) for m in rows]


def find(session: Session, workspace_id: str, mailbox_id: str) -> Mailbox | None:
    """The workspace's mailbox; None for an unknown id or another workspace's."""
    if len(mailbox_id) > 40:
        return None
    mailbox = session.get(Mailbox, mailbox_id)
    return mailbox if mailbox is not None and mailbox.workspace_id == workspace_id else None


def get_mailbox(
    session: Session, workspace_id: str, mailbox_id: str, now: datetime | None = None
) -> MailboxView | None:
    mailbox = find(session, workspace_id, mailbox_id)
    if mailbox is None:
        return None
    now = now or utcnow()
    count = _counts(session, [mailbox.id]).get(mailbox.id, 0)
    return _view(mailbox, count, push_state(session, mailbox.id, now), now)


def open_sync(session: Session, mailbox: Mailbox) -> str | None:
    """A queued or running job that syncs (or will sync) the mailbox: one of its workspace
    covering its provider. Jobs record their mailboxes only when they end, and every open job
    of the workspace and provider includes every active mailbox of that provider."""
    jobs = session.exec(
        select(SyncJob)
        .where(
            SyncJob.workspace_id == mailbox.workspace_id,
            col(SyncJob.status).in_((JobStatus.queued.value, JobStatus.running.value)),
        )
        .order_by(col(SyncJob.queued_at))
    )
    for job in jobs:
        if not job.providers or mailbox.provider in job.providers:
            return job.id
    return None


# (provider, credentials) -> whether the provider revoked the grant (False: it has no
# revocation endpoint for it). Raises on failure; the disconnect stands either way.
Revoke = Callable[[str, dict[str, Any]], bool]


def provider_revoker(endpoints: ProviderEndpoints) -> Revoke:
    """Revocation at the providers `endpoints` name (providers/registry.revoke_grant)."""
    return lambda provider, credentials: revoke_grant(provider, credentials, endpoints)


@dataclass(frozen=True)
class Disconnected:
    view: MailboxView
    revoked: bool  # the provider revoked the grant


def disconnect(
    database_url: str,
    box: CredentialBox,
    workspace_id: str,
    mailbox_id: str,
    revoke: Revoke,
    now: Callable[[], datetime] = utcnow,
    stop_push: Callable[[Mailbox], object] | None = None,
) -> Disconnected | None:
    """Disconnect the mailbox: its credentials, token state, cursor and index are deleted and
    its status says `disconnected` (the row stays, so GET shows what became of it); then the
    grant is revoked at the provider where it has a revocation endpoint. `stop_push` closes
    its push channel first (the provider call needs the grant). None for an unknown mailbox;
    MailboxSyncingError (409) while a sync of it is queued or running."""
    with session_scope(database_url) as session:
        mailbox = find(session, workspace_id, mailbox_id)
        if mailbox is None:
            return None
        busy = open_sync(session, mailbox)
        if busy is not None:
            raise MailboxSyncingError(
                f"a sync of mailbox {mailbox_id} is queued or running ({busy}); disconnect it "
                "once that job has ended",
                job_id=busy,
            )
        sealed, provider = mailbox.credentials_encrypted, mailbox.provider
        if stop_push is not None and sealed:
            try:
                stop_push(mailbox)
            except Exception as exc:  # push is off here either way; the channel lapses
                log.warning("mailbox %s: stopping its push channel failed (%s)", mailbox_id,
                            type(exc).__name__)  # fmt: skip
        # As a re-connect does: a sync that starts meanwhile writes nothing more (engine._held).
        session.exec(  # type: ignore[call-overload]
            update(Mailbox)
            .where(col(Mailbox.id) == mailbox_id)
            .values(credentials_version=Mailbox.credentials_version + 1)
            .execution_options(synchronize_session=False)
        )
        session.exec(delete(Message).where(col(Message.mailbox_id) == mailbox_id))  # type: ignore[call-overload]
        session.refresh(mailbox)
        mailbox.status = MailboxStatus.disconnected.value
        mailbox.credentials_encrypted, mailbox.auth_state_encrypted = "", None
        mailbox.cursor = mailbox.checkpoint = None
        mailbox.checkpoint_at = mailbox.last_synced_at = None
        mailbox.building_generation = None
        session.add(mailbox)
        session.flush()
        view = _view(mailbox, 0, push_state(session, mailbox.id, now()), now())
    revoked = False
    if sealed:
        try:
            revoked = revoke(provider, box.open(sealed))
        except Exception as exc:  # the grant is forgotten here either way; say why, not what
            log.warning("mailbox %s: revocation at %s failed (%s)", mailbox_id, provider,
                        type(exc).__name__)  # fmt: skip
    return Disconnected(view, revoked)


def mark_reauth_required(
    session: Session, mailbox_id: str, credentials_version: int, reason: str
) -> bool:
    """active -> reauth_required, and its `mailbox.reauth_required` webhook event in the same
    transaction, once per transition (a compare-and-set on the status and on the credentials
    the failing sync read: a re-connect meanwhile is not undone). True when it changed."""
    changed = session.exec(  # type: ignore[call-overload]
        update(Mailbox)
        .where(
            col(Mailbox.id) == mailbox_id,
            col(Mailbox.status) == MailboxStatus.active.value,
            col(Mailbox.credentials_version) == credentials_version,
        )
        .values(
            status=MailboxStatus.reauth_required.value,
            last_error_code="provider_auth_failed",
            last_error_message=reason,
        )
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount != 1:
        return False
    mailbox = session.get(Mailbox, mailbox_id)
    assert mailbox is not None
    session.refresh(mailbox)
    now = utcnow()
    count = _counts(session, [mailbox_id]).get(mailbox_id, 0)
    view = _view(mailbox, count, push_state(session, mailbox_id, now), now)
    outbox.record_event(
        session,
        mailbox.workspace_id,
        MAILBOX_REAUTH_REQUIRED,
        None,  # once per transition: the compare-and-set above is the guard
        {"mailbox": view.as_dict(), "reason": reason},
    )
    return True


@dataclass(frozen=True)
class Attempt:
    """How one mailbox of a job came out: error None when it synced."""

    mailbox_id: str
    error: MailboxError | None = None


def record_attempts(session: Session, job_id: str, attempts: Sequence[Attempt]) -> None:
    """Each mailbox's last job and its error (cleared by a successful sync)."""
    for attempt in attempts:
        values: dict[str, Any] = {"last_job_id": job_id}
        values["last_error_code"] = attempt.error.code if attempt.error else None
        values["last_error_message"] = attempt.error.message if attempt.error else None
        session.exec(  # type: ignore[call-overload]
            update(Mailbox)
            .where(col(Mailbox.id) == attempt.mailbox_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
