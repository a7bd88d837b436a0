"""Mailbox syncs against the fakes over HTTPS: rebuilds are atomic, interrupted ones resume."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from mailsync.core.sync import index
from mailsync.db import session_scope
from mailsync.errors import ProviderError
from mailsync.orchestration import runtime
from mailsync.settings import Settings
from tests.support.mailboxes import connected_mailbox
from tests.support.stack import FakeProviders

LIST_OPERATION = {"gmail": "messages.list", "microsoft": "delta"}


def connect(
    settings: Settings, fakes: FakeProviders, provider: str, messages: int
) -> tuple[str, str]:
    address = f"sync-{secrets.token_hex(4)}@{provider}.example"
    credentials = fakes.admin(provider).create_mailbox(address, messages).provider_credentials()
    _, mailbox_id = connected_mailbox(settings, provider, address, credentials)
    return mailbox_id, address


def run(settings: Settings, mailbox_id: str, mode: str, **kwargs: Any) -> Any:
    return runtime.sync_now(mailbox_id, mode, settings, **kwargs)


def live_ids(settings: Settings, mailbox_id: str) -> set[str]:
    with session_scope(settings.resolved_database_url) as session:
        return index.message_ids(session, mailbox_id)


@pytest.mark.parametrize("provider", ["gmail", "microsoft"])
def test_interrupted_rebuild_leaves_the_index_intact_and_resumes(
    settings: Settings, fakes: FakeProviders, provider: str
) -> None:
    """A full sync that fails half-way leaves the previous index exactly as it was; the next
    full sync resumes from the saved checkpoint (the fake's request counts show the pages
    before it were not fetched again) and ends with exactly the fake's message set."""
    mailbox_id, address = connect(settings, fakes, provider, messages=1200)
    assert run(settings, mailbox_id, "full").performed_mode == "full"
    before = live_ids(settings, mailbox_id)
    admin = fakes.admin(provider)
    assert before == set(admin.ids(address))
    added = admin.add_messages(address, 5)

    # List calls fail from the second page on, with a Retry-After beyond what a sync waits
    # out (the run fails at once instead of backing off for ~15 s first).
    def break_list_calls(after: int = 0) -> None:
        admin.fail(LIST_OPERATION[provider], 503, count=50, retry_after=60, after=after)

    broken: list[int] = []

    def break_after_first_page(processed: int, _estimate: int | None) -> None:
        if processed and not broken:
            broken.append(processed)
            break_list_calls()

    if provider == "gmail":
        # Gmail reads ahead one page in order: armed before the run, the fault lets the first
        # list call through (its page is written and checkpointed), then fails the second.
        # Armed later it would race the read-ahead of 3 pages and could come too late.
        break_list_calls(after=1)
        with pytest.raises(ProviderError):
            run(settings, mailbox_id, "full")
    else:
        # Graph folders are read concurrently and a worker's failure is raised at once, so
        # the fault is armed once a page is written; the bounded prefetch (a few of the 13
        # pages) cannot have read the rest by then.
        with pytest.raises(ProviderError):
            run(settings, mailbox_id, "full", progress=break_after_first_page)
    assert live_ids(settings, mailbox_id) == before  # nothing of the rebuild is visible

    admin.reset_stats()  # clears the faults too
    result = run(settings, mailbox_id, "full")
    assert result.resumed
    listed = admin.stats()[LIST_OPERATION[provider]]
    fresh_pages = -(-1205 // (500 if provider == "gmail" else 100))
    assert listed < fresh_pages  # it did not start over
    assert live_ids(settings, mailbox_id) == set(admin.ids(address))
    assert set(added) <= live_ids(settings, mailbox_id)


@pytest.mark.parametrize("provider", ["gmail", "microsoft"])
def test_expired_cursor_becomes_a_full_sync_with_cursor_reset(
    settings: Settings, fakes: FakeProviders, provider: str
) -> None:
    """A stale historyId / expired deltaLink ends in a completed full sync that says
    cursor_reset, with exactly the fake's message set."""
    mailbox_id, address = connect(settings, fakes, provider, messages=30)
    run(settings, mailbox_id, "full")
    if provider == "gmail":
        fakes.gmail.expire_history(address)
    else:
        fakes.microsoft.expire_delta(address)
    fakes.admin(provider).add_messages(address, 2)
    result = run(settings, mailbox_id, "incremental")
    assert (result.performed_mode, result.reason) == ("full", "cursor_reset")
    assert live_ids(settings, mailbox_id) == set(fakes.admin(provider).ids(address))


def test_progress_reports_processed_and_estimate(settings: Settings, fakes: FakeProviders) -> None:
    """A full sync reports the messages processed so far with the provider's estimate."""
    mailbox_id, _ = connect(settings, fakes, "gmail", messages=700)
    seen: list[tuple[int, int | None]] = []
    run(settings, mailbox_id, "full", progress=lambda n, total: seen.append((n, total)))
    assert seen[-1] == (700, 700) and seen[0][0] < 700
