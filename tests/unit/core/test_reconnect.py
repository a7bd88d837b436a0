"""Re-connecting a mailbox starts it afresh (issue 15 point 7)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from sqlmodel import Session, select

from mailsync.core import workspaces
from mailsync.core.sync.engine import sync_mailbox
from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, Message
from mailsync.errors import CredentialsChangedError, SyncInProgressError
from mailsync.providers.base import MessageRecord, Page, ProviderEndpoints
from tasks.sync_mailbox import is_transient_error

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


class Pages:
    """A provider of the OLD credentials: three pages of two messages, then a cursor and a
    token cache; `between` runs after each page is handed out (the reconnect happens there)."""

    name = "gmail"

    def __init__(self, between: Callable[[int], None]) -> None:
        self.between = between

    def _pages(self) -> Iterator[Page]:
        for n in range(3):
            records = [MessageRecord(f"old-{n}{k}", None, "ada@example.com") for k in range(2)]
            yield Page(upserts=records, checkpoint=f"page-{n}", cursor="c-old" if n == 2 else None)
            self.between(n)

    def full_sync(self, checkpoint: str | None = None) -> Iterator[Page]:
        return self._pages()

    def incremental_sync(self, cursor: str) -> Iterator[Page]:
        return self._pages()

    def auth_state(self) -> str | None:
        return "old account's token cache"

    def close(self) -> None:
        pass


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_a_sync_racing_a_reconnect_writes_nothing_of_the_old_account(
    database_url: str, mode: str
) -> None:
    """A sync still running on the old credentials when the mailbox is re-connected stops at
    its next write (CredentialsChangedError: code sync_in_progress, retried by the task with
    the new credentials): no page, cursor, checkpoint or token cache of the old account lands
    after the reconnect. Checkpoints and token state are bound to the credentials version."""
    box = CredentialBox(Fernet.generate_key())
    workspace_id = f"rr-{secrets.token_hex(4)}"
    with session_scope(database_url) as session:
        workspaces.create_workspace(session, workspace_id)
        mailbox, _ = workspaces.connect_mailbox(
            session, box, workspace_id, "gmail", "ada@example.com", OLD
        )
        mailbox.cursor = "c-0" if mode == "incremental" else None
        session.add(mailbox)
        mailbox_id = mailbox.id

    def reconnect(page: int) -> None:
        if page == 0:
            with session_scope(database_url) as session:
                workspaces.connect_mailbox(
                    session, box, workspace_id, "gmail", "ada@example.com", NEW
                )

    with pytest.raises(CredentialsChangedError) as stopped:
        sync_mailbox(
            database_url,
            mailbox_id,
            mode,
            box=box,
            endpoints=ProviderEndpoints(),
            factory=lambda *_a, **_k: Pages(reconnect),
        )
    assert isinstance(stopped.value, SyncInProgressError)
    assert is_transient_error(stopped.value)
    with Session(get_engine(database_url)) as session:
        after = session.get(Mailbox, mailbox_id)
        assert after is not None
        left = session.exec(select(Message).where(Message.mailbox_id == mailbox_id)).all()
        assert [m.provider_message_id for m in left] == []
        assert (after.cursor, after.checkpoint, after.auth_state_encrypted) == (None, None, None)
        assert after.building_generation is None
