"""Mailboxes in new workspaces without the API: connected to a fake provider (sync-level
tests) or bare, for rows written straight into the index (search and migration tests)."""

from __future__ import annotations

import secrets
from typing import Any

from mailsync.core import workspaces
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox
from mailsync.settings import Settings


def connected_mailbox(
    settings: Settings, provider: str, address: str, credentials: dict[str, Any]
) -> tuple[str, str]:
    """(workspace id, mailbox id) of `address` connected to a new workspace."""
    with session_scope(settings.resolved_database_url) as session:
        workspace = workspaces.create_workspace(session, f"ws-{secrets.token_hex(4)}")
        mailbox, _ = workspaces.connect_mailbox(
            session, CredentialBox(settings.fernet_key()), workspace.id, provider, address,
            credentials,
        )  # fmt: skip
        return workspace.id, mailbox.id


def bare_mailbox(url: str, workspace_id: str) -> str:
    """The id of a Gmail mailbox, never connected, in a new workspace `workspace_id`."""
    with session_scope(url) as session:
        workspaces.create_workspace(session, workspace_id)
        mailbox = Mailbox(
            workspace_id=workspace_id, provider="gmail", address="a@x", credentials_encrypted="-"
        )
        session.add(mailbox)
        session.flush()
        return mailbox.id
