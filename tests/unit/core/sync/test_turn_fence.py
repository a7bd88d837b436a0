"""A sync whose mailbox turn lapsed stops before it writes again (issue 15 point 5)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlmodel import Session

from mailsync.core import workspaces
from mailsync.core.sync import index
from mailsync.core.sync.engine import sync_mailbox
from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, Message
from mailsync.errors import SyncInProgressError, TurnLapsedError
from mailsync.providers.base import MessageRecord, Page, ProviderEndpoints

CREDENTIALS = {
    "type": "oauth",
    "client_id": "client.apps.googleusercontent.com",
    "client_secret": "s",
    "refresh_token": "1//r",
}


class ThreePages:
    """A provider whose mailbox is three pages of two messages."""

    name = "gmail"

    def full_sync(self, checkpoint: str | None = None) -> Iterator[Page]:
        for n in range(3):
            records = [MessageRecord(f"m{n}{k}", None, "a@x.io") for k in range(2)]
            yield Page(upserts=records, checkpoint=f"page-{n}", cursor="c" if n == 2 else None)

    def incremental_sync(self, cursor: str) -> Iterator[Page]:
        yield from ()

    def auth_state(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def test_a_sync_that_lost_its_turn_writes_no_further_page(database_url: str) -> None:
    """The turn lapses once the first page is written (Prefect could not renew it): the
    sync stops with TurnLapsedError (code sync_in_progress) before the second page, so a sync
    that took the turn since is alone in writing; the first page and its checkpoint stay for
    a resume, and the live index is untouched."""
    box = CredentialBox(Fernet.generate_key())
    with session_scope(database_url) as session:
        workspace_id = f"tf-{secrets.token_hex(4)}"
        workspaces.create_workspace(session, workspace_id)
        mailbox, _ = workspaces.connect_mailbox(
            session, box, workspace_id, "gmail", "a@x.io", CREDENTIALS
        )
        mailbox_id = mailbox.id
    lapsed: list[bool] = []

    def progress(processed: int, _estimate: int | None) -> None:
        lapsed.append(True)  # the renewal failed while the first page was being written

    def factory(*_args: Any, **_kw: Any) -> ThreePages:
        return ThreePages()

    with pytest.raises(TurnLapsedError) as stopped:
        sync_mailbox(
            database_url,
            mailbox_id,
            "full",
            box=box,
            endpoints=ProviderEndpoints(),
            factory=factory,
            progress=progress,
            fence=lambda: not lapsed,
        )
    assert isinstance(stopped.value, SyncInProgressError)
    with Session(get_engine(database_url)) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox is not None
        assert (mailbox.generation, mailbox.building_generation) == (0, 1)
        assert mailbox.checkpoint == "page-0"
        rows = session.exec(
            Message.__table__.select().where(Message.mailbox_id == mailbox_id)  # type: ignore[attr-defined]
        ).all()
        assert len(rows) == 2
        assert index.message_ids(session, mailbox_id) == set()
