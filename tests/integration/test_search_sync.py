"""Message search through real Gmail syncs against the fake: the index the API searches
follows full and incremental syncs, and a rebuild keeps every message's id."""

from __future__ import annotations

import secrets

from sqlmodel import Session

from mailsync.core.search import store
from mailsync.db import get_engine
from mailsync.orchestration import runtime
from mailsync.settings import Settings
from tests.support.mailboxes import connected_mailbox
from tests.support.stack import FakeProviders


def listing(settings: Settings, workspace_id: str, **filters: str) -> dict[str, str]:
    """provider id -> API id of every message the workspace's search shows."""
    found: dict[str, str] = {}
    cursor = None
    with Session(get_engine(settings.resolved_database_url)) as session:
        while True:
            page = store.search(session, workspace_id, store.Filters(**filters), limit=100,
                                cursor=cursor)  # fmt: skip
            found.update({m.provider_message_id: m.id for m in page.messages})
            if (cursor := page.next_cursor) is None:
                return found


def test_search_follows_syncs_and_keeps_ids_across_a_rebuild(
    settings: Settings, fakes: FakeProviders
) -> None:
    """After a full sync the search lists exactly the fake's messages; an incremental sync
    adds new ones, drops deleted ones and applies label changes (the label filter agrees);
    a second full sync gives every remaining message the id it had."""
    address = f"search-{secrets.token_hex(4)}@gmail.example"
    admin = fakes.admin("gmail")
    credentials = admin.create_mailbox(address, 150).provider_credentials()
    workspace_id, mailbox_id = connected_mailbox(settings, "gmail", address, credentials)
    runtime.sync_now(mailbox_id, "full", settings)
    first = listing(settings, workspace_id)
    assert set(first) == set(admin.ids(address))

    added = admin.add_messages(address, 3)
    gone = sorted(first)[0]
    admin.delete_message(address, gone)
    starred = sorted(first)[1]
    admin.modify_labels(address, starred, add=["STARRED"])
    runtime.sync_now(mailbox_id, "incremental", settings)
    second = listing(settings, workspace_id)
    assert set(second) == set(admin.ids(address)) == set(first) - {gone} | set(added)
    assert starred in listing(settings, workspace_id, label="starred")

    runtime.sync_now(mailbox_id, "full", settings)
    third = listing(settings, workspace_id)
    assert third == second


def test_search_follows_graph_syncs_moves_and_a_rebuild(
    settings: Settings, fakes: FakeProviders
) -> None:
    """Microsoft through Graph delta: after a full sync the search lists exactly the fake's
    Inbox and Sent Items; an incremental sync adds new mail, drops deleted mail, re-files a
    message moved between synced folders (the folder filter agrees) and drops one moved out
    of them; a second full sync gives every remaining message the id it had."""
    address = f"search-{secrets.token_hex(4)}@microsoft.example"
    admin = fakes.microsoft
    credentials = admin.create_mailbox(address, 120).provider_credentials()
    workspace_id, mailbox_id = connected_mailbox(settings, "microsoft", address, credentials)

    def synced() -> set[str]:
        return set(admin.ids(address, folder="inbox")) | set(admin.ids(address, folder="sentitems"))

    runtime.sync_now(mailbox_id, "full", settings)
    first = listing(settings, workspace_id)
    assert set(first) == synced() and first

    inbox = sorted(admin.ids(address, folder="inbox"))
    added = admin.add_messages(address, 3, folder="inbox")
    admin.delete_message(address, inbox[0])
    admin.update_message(address, inbox[1], folder="sentitems")
    admin.update_message(address, inbox[2], folder="archive")
    runtime.sync_now(mailbox_id, "incremental", settings)
    second = listing(settings, workspace_id)
    assert set(second) == synced() == set(first) - {inbox[0], inbox[2]} | set(added)
    assert second[inbox[1]] == first[inbox[1]]  # re-filed, same id
    sent = listing(settings, workspace_id, label="sentitems")
    assert inbox[1] in sent and set(sent) == set(admin.ids(address, folder="sentitems"))
    assert inbox[1] not in listing(settings, workspace_id, label="inbox")

    runtime.sync_now(mailbox_id, "full", settings)
    assert listing(settings, workspace_id) == second
