"""Messages moved between synced Graph folders before, during or after a sync stay indexed, once.

Real path: the engine and the index on the test database, MicrosoftProvider (msal + httpx)
against the fake Graph over HTTPS. The fake reports a move as Graph does: `@removed` in the
source folder's delta, a new item in the target's. "During" is arranged with the fake's delta
gates: the folder read second is held until the other's round was answered and the messages
moved, so the sync reads one side of each move before it and the other side after it.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from sqlmodel import select

from mailsync.core import workspaces
from mailsync.core.sync.engine import MailboxResult
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, Message
from mailsync.fakes.client import MicrosoftAdmin
from mailsync.orchestration import runtime
from mailsync.settings import Settings
from tests.support.stack import FakeProviders
from tests.support.waiting import eventually

MOVED_EACH_WAY = 3


@dataclass(frozen=True)
class FolderSet:
    """A `microsoft_folders` setting and two of its folders (admin keys) to move between."""

    setting: str
    first: str
    second: str


FOLDER_SETS = {
    "default": FolderSet("inbox,sentitems", "inbox", "sentitems"),
    # A nested folder and a top-level one; synced as folder ids in listing order.
    "all": FolderSet("all", "inbox/newsletters", "archive"),
}


@dataclass
class Box:
    settings: Settings
    admin: MicrosoftAdmin
    mailbox_id: str
    address: str
    folders: FolderSet

    def sync(self, mode: str = "incremental") -> MailboxResult:
        return runtime.sync_now(self.mailbox_id, mode, self.settings)

    def index(self) -> list[tuple[str, tuple[str, ...]]]:
        """(id, labels) of every row readers see, duplicates included."""
        with session_scope(self.settings.resolved_database_url) as session:
            mailbox = session.get(Mailbox, self.mailbox_id)
            assert mailbox is not None
            rows = session.exec(
                select(Message).where(
                    Message.mailbox_id == self.mailbox_id,
                    Message.generation == mailbox.generation,
                )
            ).all()
            return [(r.provider_message_id, tuple(r.labels)) for r in rows]

    def expected(self) -> dict[str, tuple[str, ...]]:
        """Every message of the synced folders at the fake -> the label of the folder holding it
        (the configured name for named folders, the folder id for all)."""
        placement = self.admin.placement(self.address)
        if self.folders.setting == "all":
            return {i: (folder_id,) for i, folder_id in placement.items()}
        names = self.folders.setting.split(",")
        labels = {f.id: f.key for f in self.admin.folders(self.address) if f.key in names}
        return {i: (labels[f],) for i, f in placement.items() if f in labels}

    def move(self, ids: list[str], folder: str) -> None:
        for message_id in ids:
            self.admin.update_message(self.address, message_id, folder=folder)

    def answered(self, folder: str) -> int:
        gates = self.admin.delta_gates(self.address)
        return gates[folder].answered if folder in gates else 0


def assert_indexed_once_where_they_are(box: Box, moved: list[str]) -> None:
    rows = box.index()
    duplicates = [i for i, n in Counter(i for i, _ in rows).items() if n > 1]
    assert not duplicates, f"indexed more than once: {duplicates}"
    indexed, expected = dict(rows), box.expected()
    missing = sorted(i for i in expected if i not in indexed)
    assert not [i for i in moved if i in missing], f"moved messages missing: {missing}"
    assert indexed == expected


@pytest.fixture(params=sorted(FOLDER_SETS))
def box(request: pytest.FixtureRequest, settings: Settings, fakes: FakeProviders) -> Iterator[Box]:
    """A fresh fake mailbox with messages in every folder, connected and fully synced."""
    folders = FOLDER_SETS[request.param]
    address = f"moves-{secrets.token_hex(4)}@microsoft.example"
    with MicrosoftAdmin(fakes.microsoft_url, fakes.ca_path) as admin:
        account = admin.create_mailbox(address, messages=100, spread=True)
        for folder in (folders.first, folders.second):  # enough to move, whatever the seeding
            admin.add_messages(address, MOVED_EACH_WAY, folder)
        with session_scope(settings.resolved_database_url) as session:
            workspace = workspaces.create_workspace(session, f"ws-{secrets.token_hex(4)}")
            mailbox, _ = workspaces.connect_mailbox(
                session,
                CredentialBox(settings.fernet_key()),
                workspace.id,
                "microsoft",
                address,
                account.credentials.model_dump(),
            )
        scoped = settings.model_copy(update={"microsoft_folders": folders.setting})
        built = Box(scoped, admin, mailbox.id, address, folders)
        assert built.sync("full").performed_mode == "full"
        try:
            yield built
        finally:
            admin.release_delta(address, folders.first)
            admin.release_delta(address, folders.second)


def pick(box: Box) -> tuple[list[str], list[str]]:
    """MOVED_EACH_WAY messages of the first folder and as many of the second."""
    first = sorted(box.admin.ids(box.address, box.folders.first))[:MOVED_EACH_WAY]
    second = sorted(box.admin.ids(box.address, box.folders.second))[:MOVED_EACH_WAY]
    assert len(first) == len(second) == MOVED_EACH_WAY
    return first, second


def moved_mid_sync(box: Box, mode: str) -> list[str]:
    """A sync (of `mode`) during which messages move both ways between the two folders, after
    the first folder's round was answered and before the second's was. Those bound for the
    second folder are edited before the sync, so its first folder reports them too (stale):
    two folders claim them in one run, in whichever order the sync applies its folders."""
    to_second, to_first = pick(box)
    for message_id in to_second:
        box.admin.update_message(box.address, message_id, subject=f"Edited {message_id[-6:]}")
    # Each folder's round here is one page (under 100 messages), so answered once = read.
    before = box.answered(box.folders.first)
    box.admin.hold_delta(box.address, box.folders.second)
    with ThreadPoolExecutor(1) as pool:
        running: Future[MailboxResult] = pool.submit(box.sync, mode)
        eventually(
            lambda: running.done() or box.answered(box.folders.first) > before,
            "the first folder's delta round answered",
        )
        assert not running.done(), running.result()  # the second folder is still held
        box.move(to_second, box.folders.second)
        box.move(to_first, box.folders.first)
        box.admin.release_delta(box.address, box.folders.second)
        assert running.result(timeout=60).performed_mode == mode
    return to_second + to_first


def test_moves_before_an_incremental_are_one_upsert_each(box: Box) -> None:
    """Messages moved both ways between two synced folders before an incremental (both sides
    in one run) are indexed once each, in their new folder, after it and after the next."""
    to_second, to_first = pick(box)
    box.move(to_second, box.folders.second)
    box.move(to_first, box.folders.first)

    counts = box.sync().counts
    assert (counts.added, counts.deleted) == (0, 0)
    assert_indexed_once_where_they_are(box, to_second + to_first)
    box.sync()
    assert_indexed_once_where_they_are(box, to_second + to_first)


def test_moves_during_an_incremental_survive_the_next_ones(box: Box) -> None:
    """Messages moved both ways while an incremental runs, between its read of one folder and
    of the other: a removal the source folder reports in a later run never deletes a message
    that run or an earlier one filed in another folder; after the next incremental every
    message is indexed once, in its new folder, and stays so."""
    moved = moved_mid_sync(box, "incremental")
    box.sync()
    assert_indexed_once_where_they_are(box, moved)
    box.sync()
    assert_indexed_once_where_they_are(box, moved)


def test_moves_during_a_full_sync_survive_the_next_incrementals(box: Box) -> None:
    """Messages moved both ways while a full sync runs, between its reads of the two folders:
    the incrementals after it (whose source folders report the removals) leave every message
    indexed once, in its new folder."""
    moved = moved_mid_sync(box, "full")
    box.sync()
    assert_indexed_once_where_they_are(box, moved)
    box.sync()
    assert_indexed_once_where_they_are(box, moved)


def test_moves_after_an_incremental_are_seen_by_the_next(box: Box) -> None:
    """Messages moved both ways after an incremental are filed in their new folder by the next
    one, once each, and stay so."""
    box.sync()
    to_second, to_first = pick(box)
    box.move(to_second, box.folders.second)
    box.move(to_first, box.folders.first)

    box.sync()
    assert_indexed_once_where_they_are(box, to_second + to_first)
    box.sync()
    assert_indexed_once_where_they_are(box, to_second + to_first)
