"""A fake provider's mailbox connected to a new workspace, without the API (sync-level tests)."""

from __future__ import annotations

import secrets
from typing import Any

from mailsync.core import workspaces
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
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
