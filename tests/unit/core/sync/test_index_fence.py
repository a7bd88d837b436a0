"""Builds of one mailbox's index are fenced (issue 15 point 5): a build that another sync
superseded stops without touching the index."""

from __future__ import annotations

import secrets

import pytest
from cryptography.fernet import Fernet
from sqlmodel import Session

from mailsync.core import workspaces
from mailsync.core.sync import index
from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox
from mailsync.errors import BuildSupersededError, SyncInProgressError
from mailsync.providers.base import MessageRecord

CREDENTIALS = {
    "type": "oauth",
    "client_id": "client.apps.googleusercontent.com",
    "client_secret": "s",
    "refresh_token": "1//r",
}


def _records(*ids: str) -> list[MessageRecord]:
    return [MessageRecord(i, None, "a@example.com") for i in ids]


def _mailbox(database_url: str) -> str:
    with session_scope(database_url) as session:
        workspace_id = f"fx-{secrets.token_hex(4)}"
        workspaces.create_workspace(session, workspace_id)
        mailbox, _ = workspaces.connect_mailbox(
            session,
            CredentialBox(Fernet.generate_key()),
            workspace_id,
            "gmail",
            "a@x.io",
            CREDENTIALS,
        )
        index.upsert(session, mailbox.id, _records("m1", "m2"), 0)
        return mailbox.id


def _begin(database_url: str, mailbox_id: str) -> None:
    with session_scope(database_url) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox is not None
        mailbox.building_generation = mailbox.generation + 1
        session.add(mailbox)


def _live(database_url: str, mailbox_id: str) -> set[str]:
    with Session(get_engine(database_url)) as session:
        return index.message_ids(session, mailbox_id)


def test_a_superseded_build_cannot_switch_and_empty_the_live_index(database_url: str) -> None:
    """Two builds of generation 1 ran side by side (the first one's lease lapsed while
    Prefect was unreachable). The second one to finish finds generation 1 already live: its
    switch is refused and the live index keeps every message (it used to discard the live
    generation as "the old one", leaving the mailbox empty)."""
    mailbox_id = _mailbox(database_url)
    _begin(database_url, mailbox_id)
    for _ in ("first build", "second build"):
        with session_scope(database_url) as session:
            index.upsert(session, mailbox_id, _records("m1", "m2", "m3"), 1, compare_to=0)
    with session_scope(database_url) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox is not None
        index.switch(session, mailbox, 1, live=0)
    assert _live(database_url, mailbox_id) == {"m1", "m2", "m3"}
    with pytest.raises(BuildSupersededError), session_scope(database_url) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox is not None
        index.switch(session, mailbox, 1, live=0)
    assert _live(database_url, mailbox_id) == {"m1", "m2", "m3"}


def test_a_superseded_build_cannot_store_another_page(database_url: str) -> None:
    """A build's page is stored only while the mailbox still builds that generation on that
    live one; once another sync switched or restarted the build, the page and its checkpoint
    are refused together."""
    mailbox_id = _mailbox(database_url)
    _begin(database_url, mailbox_id)
    with session_scope(database_url) as session:
        index.keep_checkpoint(session, mailbox_id, "page-1", building=1, live=0)
    with session_scope(database_url) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox is not None
        index.switch(session, mailbox, 1, live=0)
    with pytest.raises(BuildSupersededError), session_scope(database_url) as session:
        index.keep_checkpoint(session, mailbox_id, "page-2", building=1, live=0)
    assert issubclass(BuildSupersededError, SyncInProgressError)
