"""Re-connecting a mailbox starts it afresh (issue 15 point 7)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from cryptography.fernet import Fernet

from mailsync.core import workspaces
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox

OLD = {
    "type": "oauth",
    "client_id": "client.apps.googleusercontent.com",
    "client_secret": "old-client-secret",
    "refresh_token": "1//refresh-token-of-the-old-account",
}
NEW = {**OLD, "refresh_token": "1//refresh-token-of-the-new-account"}


def test_a_reconnect_forgets_the_old_accounts_build_checkpoint_and_token_state(
    database_url: str,
) -> None:
    """New credentials may be another account: the half-built generation, its checkpoint (a
    resumed build would skip the new account's first pages) and the provider's token state
    (msal's cache holds the old account's refresh token) all go with the cursor and index."""
    box = CredentialBox(Fernet.generate_key())
    workspace_id = f"rc-{secrets.token_hex(4)}"
    with session_scope(database_url) as session:
        workspaces.create_workspace(session, workspace_id)
        mailbox, created = workspaces.connect_mailbox(
            session, box, workspace_id, "gmail", "ada@example.com", OLD
        )
        assert created
        mailbox.cursor, mailbox.building_generation = "12345", mailbox.generation + 1
        mailbox.checkpoint = '{"page_token": "page-7"}'
        mailbox.checkpoint_at = datetime(2026, 12, 1, tzinfo=UTC)
        mailbox.auth_state_encrypted = box.seal({"state": "old account's token cache"})
        session.add(mailbox)
    with session_scope(database_url) as session:
        again, created = workspaces.connect_mailbox(
            session, box, workspace_id, "gmail", "ada@example.com", NEW
        )
        assert not created and again.id == mailbox.id
        assert box.open(again.credentials_encrypted)["refresh_token"] == NEW["refresh_token"]
        stale = {
            "cursor": again.cursor,
            "building_generation": again.building_generation,
            "checkpoint": again.checkpoint,
            "checkpoint_at": again.checkpoint_at,
            "auth_state_encrypted": again.auth_state_encrypted,
        }
        assert stale == dict.fromkeys(stale)
