"""Workspaces and their connected mailboxes: the admin operations behind the CLI and the demo."""

from __future__ import annotations

import re
from typing import Any

from sqlmodel import Session, col, delete, select, update

from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, MailboxStatus, Message, Workspace, utcnow
from mailsync.providers.registry import PROVIDERS, validate_credentials

_WORKSPACE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def create_workspace(
    session: Session,
    workspace_id: str,
    name: str | None = None,
    *,
    nightly_full_sync: bool = False,
) -> Workspace:
    if not _WORKSPACE_ID.match(workspace_id):
        raise ValueError("workspace ids are 1-64 of a-z, 0-9, '_' and '-', starting alphanumeric")
    existing = session.get(Workspace, workspace_id)
    if existing is not None:
        return existing
    workspace = Workspace(
        id=workspace_id, name=name or workspace_id, nightly_full_sync=nightly_full_sync
    )
    session.add(workspace)
    session.flush()
    return workspace


def update_workspace(
    session: Session,
    workspace_id: str,
    *,
    name: str | None = None,
    nightly_full_sync: bool | None = None,
) -> Workspace:
    """Change a workspace's settings; None leaves a setting as it is."""
    workspace = session.get(Workspace, workspace_id)
    if workspace is None:
        raise ValueError(f"workspace {workspace_id!r} does not exist")
    if name is not None:
        workspace.name = name
    if nightly_full_sync is not None:
        workspace.nightly_full_sync = nightly_full_sync
    session.add(workspace)
    session.flush()
    return workspace


def connect_mailbox(
    session: Session,
    box: CredentialBox,
    workspace_id: str,
    provider: str,
    address: str,
    credentials: dict[str, Any],
) -> tuple[Mailbox, bool]:
    """Connect (or re-connect with new credentials) a mailbox; returns it and whether it is new.

    Re-connecting forgets the cursor and the index, a half-built generation and its
    checkpoint, and the provider's token state: new credentials may point at another account,
    so only a fresh full sync with them alone can be trusted.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}")
    if "@" not in address:
        raise ValueError("the account address must be an email address")
    sealed = box.seal(validate_credentials(provider, credentials))
    # A new credentials version first, before anything is read: the UPDATE waits for a sync's
    # write in flight (each locks the row first, engine._held) and refuses its next ones, and
    # what is read below is what that write left, so clearing it misses nothing.
    session.exec(  # type: ignore[call-overload]
        update(Mailbox)
        .where(
            col(Mailbox.workspace_id) == workspace_id,
            col(Mailbox.provider) == provider,
            col(Mailbox.address) == address,
        )
        .values(credentials_version=Mailbox.credentials_version + 1)
        .execution_options(synchronize_session=False)
    )
    if session.get(Workspace, workspace_id) is None:
        raise ValueError(f"workspace {workspace_id!r} does not exist")
    mailbox = session.exec(
        select(Mailbox).where(
            Mailbox.workspace_id == workspace_id,
            Mailbox.provider == provider,
            Mailbox.address == address,
        )
    ).first()
    created = mailbox is None
    if mailbox is None:
        mailbox = Mailbox(
            workspace_id=workspace_id, provider=provider, address=address, credentials_encrypted=""
        )
    else:
        session.exec(delete(Message).where(col(Message.mailbox_id) == mailbox.id))  # type: ignore[call-overload]
        mailbox.cursor = None
        mailbox.last_synced_at = None
        mailbox.building_generation = None
        mailbox.checkpoint = mailbox.checkpoint_at = None
        mailbox.auth_state_encrypted = None
    mailbox.credentials_encrypted = sealed
    # Whatever it was (waiting for re-authorization, disconnected), it can be synced again.
    mailbox.status = MailboxStatus.active.value
    mailbox.connected_at = utcnow()
    mailbox.last_error_code = mailbox.last_error_message = None
    session.add(mailbox)
    session.flush()
    return mailbox, created


def workspace_exists(session: Session, workspace_id: str) -> bool:
    return session.get(Workspace, workspace_id) is not None
