"""The message index: upserts are idempotent, counts are honest, full listings prune."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet

from mailsync.core import workspaces
from mailsync.core.sync import index
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, Workspace, new_id
from mailsync.providers.base import FolderRemoval, MessageRecord


@pytest.fixture
def mailbox_id(database_url: str) -> str:
    with session_scope(database_url) as session:
        ws = workspaces.create_workspace(session, new_id("ws").lower().replace("_", "-"))
        mailbox = Mailbox(
            workspace_id=ws.id,
            provider="gmail",
            address="a@example.com",
            credentials_encrypted=CredentialBox(Fernet.generate_key()).seal({}),
        )
        session.add(mailbox)
        session.flush()
        assert session.get(Workspace, ws.id) is not None
        return mailbox.id


def record(pid: str, subject: str = "hello") -> MessageRecord:
    return MessageRecord(
        provider_message_id=pid,
        thread_id="t1",
        sender="Ada <ada@example.com>",
        to=["b@example.com"],
        subject=subject,
        date=datetime(2026, 4, 17, 10, 30, tzinfo=UTC),
        labels=["INBOX"],
        size=1234,
    )


def test_upsert_counts_added_updated_and_is_idempotent(database_url: str, mailbox_id: str) -> None:
    """Re-applying the same page changes nothing; a changed field counts as one update."""
    with session_scope(database_url) as session:
        first = index.upsert(session, mailbox_id, [record("m1"), record("m2")], 0)
    with session_scope(database_url) as session:
        again = index.upsert(session, mailbox_id, [record("m1"), record("m2")], 0)
    with session_scope(database_url) as session:
        changed = index.upsert(session, mailbox_id, [record("m1", "changed"), record("m2")], 0)
    assert (first.added, first.updated) == (2, 0)
    assert (again.added, again.updated) == (0, 0)
    assert (changed.added, changed.updated) == (0, 1)


def test_remove_counts_only_existing_rows(database_url: str, mailbox_id: str) -> None:
    """Deletions count only rows that existed, once each."""
    with session_scope(database_url) as session:
        index.upsert(session, mailbox_id, [record(f"m{i}") for i in range(3)], 0)
        assert index.remove(session, mailbox_id, ["m0", "m0", "missing"], 0) == 1
        assert index.message_ids(session, mailbox_id) == {"m1", "m2"}


def test_folder_labels_join_and_removals_take_off_only_their_own(
    database_url: str, mailbox_id: str
) -> None:
    """With folder labels an upsert adds its folder to the message's labels (a message two
    folders reported is filed under both); a folder removal takes off only that folder and
    deletes the message only once no folder holds it; only deleted rows are counted."""

    def filed(pid: str, label: str) -> MessageRecord:
        return replace(record(pid), labels=[label])

    with session_scope(database_url) as session:
        index.upsert(session, mailbox_id, [filed("gone", "A"), filed("moved", "B")], 0)
        index.upsert(session, mailbox_id, [filed("both", "B")], 0, add_labels=True)
        counts = index.upsert(session, mailbox_id, [filed("both", "A")], 0, add_labels=True)
        assert (counts.added, counts.updated) == (0, 1)
    removals = [FolderRemoval(pid, "A") for pid in ("gone", "moved", "both", "missing")]
    with session_scope(database_url) as session:
        assert index.remove_from_folders(session, mailbox_id, removals, 0) == 1
    with session_scope(database_url) as session:
        assert index.message_ids(session, mailbox_id) == {"moved", "both"}
        unchanged = [filed("moved", "B"), filed("both", "B")]
        assert index.upsert(session, mailbox_id, unchanged, 0) == index.Counts()
    with session_scope(database_url) as session:
        last = [FolderRemoval("both", "B")]
        assert index.remove_from_folders(session, mailbox_id, last, 0) == 1
        assert index.message_ids(session, mailbox_id) == {"moved"}


def test_rebuild_is_invisible_until_the_switch(database_url: str, mailbox_id: str) -> None:
    """Readers see the live generation only; a rebuild counts changes against it, and the
    switch makes it live in one step, reporting what vanished and dropping the old rows."""
    with session_scope(database_url) as session:
        index.upsert(session, mailbox_id, [record("keep"), record("edit"), record("gone")], 0)
    with session_scope(database_url) as session:
        counts = index.upsert(
            session, mailbox_id, [record("keep"), record("edit", "new"), record("born")], 1,
            compare_to=0,
        )  # fmt: skip
        assert (counts.added, counts.updated) == (1, 1)
        assert index.message_ids(session, mailbox_id) == {"keep", "edit", "gone"}
    with session_scope(database_url) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox is not None
        mailbox.building_generation = 1  # as a full sync records it when it begins
        session.add(mailbox)
        session.flush()
        assert index.switch(session, mailbox, 1, live=0) == 1
    with session_scope(database_url) as session:
        assert index.message_ids(session, mailbox_id) == {"keep", "edit", "born"}
        index.discard(session, mailbox_id, 1)
        assert index.message_ids(session, mailbox_id) == set()
