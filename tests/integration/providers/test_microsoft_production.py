"""Guards MicrosoftProvider at production grade, over real HTTPS against the fake with the real
msal and httpx: resumable full syncs, all-folders mode, concurrency within Outlook's per-mailbox
limit, retries through injected faults, and token state kept between syncs.

Graph facts each test below stands on (Microsoft Graph docs):
- message delta is per folder: every folder has its own round and its own deltaLink;
- the page size is asked for with `Prefer: odata.maxpagesize`, never with `$top`;
- lost delta state answers 410 Gone / syncStateNotFound;
- throttling answers 429 with Retry-After;
- Outlook serves at most 4 concurrent requests per mailbox (and runs a `$batch`'s up to 20
  parts concurrently too, so batching would not lift that limit).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from mailsync.fakes.client import (
    Concurrency,
    FaultPlan,
    FaultStats,
    Folder,
    FolderRef,
    GraphRequest,
)
from mailsync.fakes.tls import ensure_tls
from mailsync.providers.base import (
    CursorExpiredError,
    Page,
    ProviderError,
    TransientProviderError,
)
from mailsync.providers.microsoft import MicrosoftProvider
from tests.support.microsoft_fake import MicrosoftFake, serve_microsoft

Fake = MicrosoftFake


@dataclass
class Box:
    fake: Fake
    address: str
    credentials: dict[str, str]
    delegated: dict[str, str]

    def ids(self, folder: str | None = None) -> set[str]:
        return set(self.fake.admin.ids(self.address, folder))

    def placement(self) -> dict[str, str]:
        """Every message id -> the id of the folder holding it, as the fake knows it."""
        return self.fake.admin.placement(self.address)

    def folders(self) -> dict[str, Folder]:
        return {f.key: f for f in self.fake.admin.folders(self.address)}

    def add(self, count: int, folder: str) -> list[str]:
        return self.fake.admin.add_messages(self.address, count, folder)

    def new_folder(self, name: str, parent: str | None = None) -> FolderRef:
        return self.fake.admin.create_folder(self.address, name, parent)

    def faults(self, **plan: Any) -> None:
        self.fake.admin.set_faults(self.address, FaultPlan(**plan))

    def fault_stats(self) -> FaultStats:
        return self.fake.admin.fault_stats(self.address)

    def concurrency(self) -> Concurrency:
        return self.fake.admin.concurrency(self.address)

    def requests(self) -> list[GraphRequest]:
        return self.fake.admin.requests(self.address)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fake]:
    tls = ensure_tls(Path(tmp_path_factory.mktemp("microsoft-production-tls")))
    with serve_microsoft(tls, seed_messages=40, seed=11) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_counters(fake: Fake) -> None:
    fake.reset()


def new_box(fake: Fake, messages: int | None = None, spread: bool = False) -> Box:
    address = f"user-{uuid.uuid4().hex[:10]}@contoso.com"
    account = fake.admin.create_mailbox(address, messages, spread=spread)
    return Box(
        fake, address, account.provider_credentials(), account.provider_credentials("delegated")
    )


@pytest.fixture
def provider_for(fake: Fake) -> Iterator[Any]:
    made: list[MicrosoftProvider] = []

    def make(box: Box, credentials: dict | None = None, **kwargs: Any) -> MicrosoftProvider:
        provider = MicrosoftProvider(
            box.address, credentials or box.credentials, fake.endpoints, **kwargs
        )
        provider.transient_retry = replace(provider.transient_retry, backoff=0.05)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def apply(index: dict[str, str], pages: list[Page]) -> dict[str, str]:
    """Pages applied to an index of id -> label, as the sync applies them."""
    for page in pages:
        for record in page.upserts:
            assert record.labels and len(record.labels) == 1
            index[record.provider_message_id] = record.labels[0]
        for message_id in page.deletions:
            index.pop(message_id, None)
        for removal in page.removals:  # scoped: a message filed elsewhere stays
            if index.get(removal.provider_message_id) == removal.label:
                del index[removal.provider_message_id]
    return index


def upserted_ids(pages: list[Page]) -> list[str]:
    return [r.provider_message_id for p in pages for r in p.upserts]


def final_cursor(pages: list[Page]) -> str:
    assert pages and all(p.cursor is None for p in pages[:-1])
    cursor = pages[-1].cursor
    assert cursor is not None
    return cursor


# --- resume -------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_after", ["first", "mid-folder", "folder-end", "second", "last"])
def test_full_sync_resumes_right_after_the_checkpointed_page(
    fake: Fake, provider_for: Any, stop_after: str
) -> None:
    """A full sync stopped after page k (its provider closed, as when the process dies) and
    resumed by a new provider from page k's checkpoint yields exactly the pages after k: the
    union is the mailbox, no message comes twice, and the fake saw exactly one delta request per
    page (none of pages 1..k is fetched again). The checkpoint holds no secret, every page
    carries the size estimate, and the resumed run's cursor works for increments."""
    box = new_box(fake, messages=40)
    inbox, sent = box.ids("inbox"), box.ids("sentitems")
    inbox_pages, sent_pages = math.ceil(len(inbox) / 5), math.ceil(len(sent) / 5)
    total_pages = inbox_pages + sent_pages
    stop = {
        "first": 1,
        "mid-folder": 3,
        "folder-end": inbox_pages,
        "second": inbox_pages + 1,
        "last": total_pages,
    }[stop_after]

    first = provider_for(box, page_size=5)
    run = first.full_sync()
    before = [next(run) for _ in range(stop)]
    run.close()
    first.close()
    checkpoint = before[-1].checkpoint
    assert checkpoint is not None
    assert box.credentials["client_secret"] not in checkpoint
    assert "access_token" not in checkpoint and "Bearer" not in checkpoint
    fake.reset()

    after = list(provider_for(box, page_size=5).full_sync(checkpoint))

    ids = upserted_ids(before) + upserted_ids(after)
    assert len(ids) == len(set(ids)) and set(ids) == inbox | sent == box.ids()
    assert fake.stats().get("delta", 0) == total_pages - stop
    assert all(p.total_estimate == len(inbox | sent) for p in before + after)
    assert all(p.checkpoint for p in before + after)
    assert not any(p.deletions or p.removals for p in before + after)
    added = box.add(2, "sentitems")
    cursor = final_cursor(after) if stop < total_pages else final_cursor(before)
    assert final_cursor(after) == cursor
    increment = list(provider_for(box).incremental_sync(cursor))
    assert set(upserted_ids(increment)) == set(added)


def test_checkpoint_chain_survives_repeated_interruptions(fake: Fake, provider_for: Any) -> None:
    """Interrupting a full sync after every single page, each time resuming with a new provider
    from the last checkpoint, still yields every message exactly once, the page that carries the
    cursor last. (Pages a stopped provider had prefetched but not yielded are fetched again by
    the next one: only yielded pages are never repeated.)"""
    box = new_box(fake, messages=30)
    seen: list[str] = []
    checkpoint: str | None = None
    cursor: str | None = None
    for _ in range(20):
        provider = provider_for(box, page_size=6)
        run = provider.full_sync(checkpoint)
        page = next(run)
        run.close()
        provider.close()
        seen += upserted_ids([page])
        checkpoint = page.checkpoint
        if page.cursor:
            cursor = page.cursor
            break
    assert cursor is not None
    assert len(seen) == len(set(seen)) and set(seen) == box.ids()


def test_unusable_checkpoint_is_refused_before_any_request(fake: Fake, provider_for: Any) -> None:
    """A checkpoint that is unreadable, was made for other folders, or points a link away from
    the configured Graph endpoint raises CursorExpiredError (start over) and sends nothing."""
    box = new_box(fake, messages=12)
    run = provider_for(box, page_size=4).full_sync()
    checkpoint = next(run).checkpoint
    run.close()
    assert checkpoint is not None
    data = json.loads(checkpoint)
    foreign = dict(data, next="https://attacker.example/v1.0/x?$skiptoken=1")
    fake.reset()

    for bad, folders in (
        ("not json", ("inbox", "sentitems")),
        (checkpoint, ("inbox",)),
        (checkpoint, None),
        (json.dumps(foreign), ("inbox", "sentitems")),
    ):
        with pytest.raises(CursorExpiredError):
            list(provider_for(box, folders=folders).full_sync(bad))
    assert fake.stats() == {}


# --- Graph facts --------------------------------------------------------------------------


def test_delta_is_per_folder(fake: Fake, provider_for: Any) -> None:
    """Graph fact: message delta is per folder. The cursor holds one deltaLink per synced folder,
    each for that folder's own delta round; an increment after a change in one folder costs one
    request per folder and reports that change under that folder only."""
    box = new_box(fake, messages=10)
    provider = provider_for(box, folders=("inbox", "sentitems", "archive"))
    cursor = final_cursor(list(provider.full_sync()))
    links = json.loads(cursor)["delta_links"]
    assert set(links) == {"inbox", "sentitems", "archive"}
    assert len(set(links.values())) == 3
    for folder, link in links.items():
        assert f"mailFolders('{folder}')/messages/delta?$deltatoken=" in link
    added = box.add(1, "archive")
    fake.reset()

    pages = list(provider.incremental_sync(cursor))

    assert apply({}, pages) == {added[0]: "archive"}
    assert fake.stats()["delta"] == 3


def test_page_size_is_a_prefer_header_never_top(fake: Fake, provider_for: Any) -> None:
    """Graph fact: delta pages are sized by `Prefer: odata.maxpagesize`, never by $top (which
    would limit the round, not the page). Every delta request of the provider asks for the
    configured size in Prefer, none carries $top, and no page is larger."""
    box = new_box(fake, messages=30)
    pages = list(provider_for(box, page_size=7).full_sync())

    assert all(len(p.upserts) <= 7 for p in pages) and len(upserted_ids(pages)) == 30
    delta = [r for r in box.requests() if r.operation == "delta"]
    assert len(delta) == len(pages)
    for request in delta:
        assert not any(key.lower() == "$top" for key in request.query)
        assert any("odata.maxpagesize=7" in prefer for prefer in request.prefer)


def test_lost_delta_state_is_cursor_expired_and_restarts_a_resumed_folder(
    fake: Fake, provider_for: Any
) -> None:
    """Graph fact: lost delta state answers 410 Gone (syncStateNotFound). An increment from such
    a cursor raises CursorExpiredError; a full sync resumed from a checkpoint whose nextLink died
    meanwhile reads that folder again from its start (those pages come twice, nothing is
    missed) and ends with exactly the mailbox and a working cursor."""
    box = new_box(fake, messages=24)
    provider = provider_for(box, page_size=4)
    run = provider.full_sync()
    first_pages = [next(run) for _ in range(2)]
    run.close()
    checkpoint = first_pages[-1].checkpoint
    fake.admin.expire_delta(box.address)

    rest = list(provider_for(box, page_size=4).full_sync(checkpoint))

    assert set(upserted_ids(first_pages + rest)) == box.ids()
    assert set(upserted_ids(rest)) == box.ids()  # the inbox came again, from its start
    cursor = final_cursor(rest)
    fake.admin.expire_delta(box.address)
    with pytest.raises(CursorExpiredError):
        list(provider_for(box).incremental_sync(cursor))


def test_throttling_waits_out_retry_after(fake: Fake, provider_for: Any) -> None:
    """Graph fact: throttling answers 429 with Retry-After. The worker that got it waits that
    long (and no less) before trying again, then the sync completes with the whole mailbox."""
    box = new_box(fake, messages=10)
    fake.admin.fail("delta", 429, retry_after=1)

    started = time.monotonic()
    pages = list(provider_for(box).full_sync())

    assert time.monotonic() - started >= 1.0
    assert set(upserted_ids(pages)) == box.ids()
    assert fake.stats()["delta"] == 3  # two folders, one page each, plus the throttled attempt


def test_ten_folders_never_exceed_four_requests_in_flight(fake: Fake, provider_for: Any) -> None:
    """Graph fact: Outlook serves at most 4 concurrent requests per mailbox (a 5th is answered
    429 MailboxConcurrency; a $batch's parts run concurrently too, so the provider sends no
    $batch). Syncing 10 folders with slow answers, the provider keeps exactly 4 requests in
    flight at its busiest and never 5: the fake rejects none. Pages still come folder by folder.
    A provider allowed 6 does trip the fake's limit, and gets through by waiting out the 429s."""
    box = new_box(fake, messages=0)
    folders = [box.new_folder(f"Client {n}") for n in range(10)]
    expected = {}
    for folder in folders:
        expected.update(dict.fromkeys(box.add(6, folder.key), folder.id))
    box.faults(share=0.0, slow_ms=40)
    folder_ids = tuple(f.id for f in folders)

    pages = list(provider_for(box, folders=folder_ids, page_size=2).full_sync())

    assert apply({}, pages) == expected
    labels = [p.upserts[0].labels[0] for p in pages if p.upserts]
    assert labels == sorted(labels, key=folder_ids.index)  # folder after folder
    assert box.concurrency() == Concurrency(limit=4, in_flight=0, peak=4, rejected=0)
    assert not any("$batch" in r.path for r in box.requests())

    class Greedy(MicrosoftProvider):
        max_concurrent_requests = 6

    fake.admin.reset_limits(box.address)
    greedy = Greedy(box.address, box.credentials, fake.endpoints, folders=folder_ids, page_size=2)
    try:
        assert apply({}, list(greedy.full_sync())) == expected
    finally:
        greedy.close()
    assert box.concurrency().rejected > 0


# --- faults -------------------------------------------------------------------------------


def test_full_then_incremental_through_20_percent_faults(fake: Fake, provider_for: Any) -> None:
    """With a fifth of the mailbox's Graph calls failing (429, 500 or 503, each with
    Retry-After), a full sync of all folders and then an increment after adds, deletes, moves,
    edits and a new folder end with exactly the fake's messages, each in its folder: retries
    absorb every fault, and none of them is a concurrency rejection."""
    box = new_box(fake, messages=400, spread=True)
    box.faults(share=0.2, statuses=[429, 500, 503], retry_after=1, seed=3)
    provider = provider_for(box, folders=None, page_size=50)

    pages = list(provider.full_sync())
    index = apply({}, pages)
    assert index == box.placement()
    assert len(upserted_ids(pages)) == len(index) == 400
    full_faults = box.fault_stats().injected

    folders = box.folders()
    inbox = sorted(box.ids("inbox"))
    design = sorted(box.ids("projects/falcon/design"))
    admin, address = fake.admin, box.address
    box.add(5, "inbox")
    box.add(3, "projects/falcon/design")
    for message_id in inbox[:3] + design[:1]:
        admin.delete_message(address, message_id)
    admin.update_message(address, inbox[3], folder="receipts")
    admin.update_message(address, inbox[4], folder=folders["archive"].id)
    admin.update_message(address, design[1], folder="inbox")
    admin.update_message(address, inbox[5], subject="Edited", is_read=True)
    escalations = box.new_folder("Escalations", parent="inbox")
    box.add(2, escalations.key)

    increment = list(provider.incremental_sync(final_cursor(pages)))

    assert apply(index, increment) == box.placement()
    edited = [r for p in increment for r in p.upserts if r.provider_message_id == inbox[5]]
    assert edited and edited[-1].subject == "Edited"
    assert full_faults > 0 and box.fault_stats().injected > full_faults
    assert box.concurrency().rejected == 0


def test_timeouts_are_retried_then_raised_as_transient(fake: Fake, provider_for: Any) -> None:
    """A Graph call that times out is tried again with backoff, transient_retry.attempts times
    in all, and then raised as TransientProviderError naming the timeout."""
    box = new_box(fake, messages=4)
    box.faults(share=0.0, slow_ms=500)
    provider = provider_for(box, folders=("inbox",), timeout=0.2)
    provider.transient_retry = replace(provider.transient_retry, backoff=0.01)

    with pytest.raises(TransientProviderError) as caught:
        list(provider.full_sync())

    assert "timed out" in str(caught.value)
    assert box.fault_stats().calls == provider.transient_retry.attempts


def test_server_errors_are_retried_with_backoff(fake: Fake, provider_for: Any) -> None:
    """500s and 503s are retried after a growing, jittered pause; two in a row cost at least
    half the first backoff plus half the doubled second, and the sync then completes."""
    box = new_box(fake, messages=6)
    provider = provider_for(box, folders=("inbox",))
    provider.transient_retry = replace(provider.transient_retry, backoff=0.2)
    fake.admin.fail("delta", 500)
    fake.admin.fail("delta", 503)

    started = time.monotonic()
    pages = list(provider.full_sync())

    assert time.monotonic() - started >= 0.1 + 0.2
    assert set(upserted_ids(pages)) == box.ids("inbox")
    assert fake.stats()["delta"] == 3


# --- all folders --------------------------------------------------------------------------


def test_all_folders_lists_nested_folders_across_pages(fake: Fake, provider_for: Any) -> None:
    """folders=None syncs every mail folder: the top-level list is read page by page (nextLink),
    child folders level by level, and each message is labelled with its folder's id. The size
    estimate on every page is the folders' totalItemCount sum. An increment picks up a folder
    created since (read in full) and a named-folders provider refuses the all-folders cursor."""
    box = new_box(fake, messages=30, spread=True)
    for n in range(11):
        box.new_folder(f"Vendor {n}")
    box.add(2, "vendor-10")
    box.add(1, "projects/falcon/design")

    pages = list(provider_for(box, folders=None).full_sync())

    placement = box.placement()
    assert apply({}, pages) == placement
    assert {p.total_estimate for p in pages} == {len(placement)}
    stats = fake.stats()
    assert stats["mailFolders"] == 2  # 18 top-level folders, 10 a page
    assert stats["childFolders"] == 3  # Inbox, Projects, Projects/Falcon have children
    assert stats["delta"] == len(box.folders())  # one page per folder at 100 a page
    cursor = final_cursor(pages)
    assert set(json.loads(cursor)["delta_links"]) == {f.id for f in box.folders().values()}

    later = box.new_folder("Later", parent="projects/roadmap")
    added = box.add(2, later.key)
    increment = list(provider_for(box, folders=None).incremental_sync(cursor))
    assert apply({}, increment) == dict.fromkeys(added, later.id)
    with pytest.raises(CursorExpiredError):
        list(provider_for(box).incremental_sync(cursor))


# --- auth state ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["credentials", "delegated"])
def test_auth_state_round_trip_skips_the_token_endpoint(
    fake: Fake, provider_for: Any, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """auth_state() returns msal's serialized token cache once it changed (and None again until
    it changes anew); a new provider given it syncs with the still-valid token and makes no
    token request, and has nothing new to return. When Graph rejects that token, the provider
    gets a new one and auth_state() hands back the changed cache. The state is never logged."""
    caplog.set_level("DEBUG")
    box = new_box(fake, messages=5)
    credentials = getattr(box, kind)
    first = provider_for(box, credentials)
    assert first.auth_state() is None
    list(first.full_sync())
    state = first.auth_state()
    assert state is not None and first.auth_state() is None
    cached = json.loads(state)
    [access_token] = [t["secret"] for t in cached["AccessToken"].values()]
    fake.reset()

    second = provider_for(box, credentials, auth_state=state)
    assert set(upserted_ids(list(second.full_sync()))) == box.ids()
    assert "token" not in fake.stats()
    assert second.auth_state() is None

    fake.admin.expire_tokens()
    third = provider_for(box, credentials, auth_state=state)
    list(third.full_sync())
    assert fake.stats()["token"] == 1
    renewed = third.auth_state()
    assert renewed is not None and renewed != state
    for secret in (access_token, state, renewed, credentials["client_secret"]):
        assert secret not in caplog.text


def test_unreadable_auth_state_is_ignored(fake: Fake, provider_for: Any) -> None:
    """An auth state that is not an msal cache is ignored (with a warning that does not quote
    it): the provider asks for a token as if it had none, and returns a good state after."""
    box = new_box(fake, messages=3)
    for bad in ("not json", "[1, 2]"):
        provider = provider_for(box, auth_state=bad)
        assert set(upserted_ids(list(provider.full_sync()))) == box.ids()
        assert json.loads(provider.auth_state() or "{}")["AccessToken"]


def test_closing_the_provider_stops_a_suspended_sync(fake: Fake, provider_for: Any) -> None:
    """close() during a sync the caller has not finished stops its workers: resuming that sync
    raises ProviderError instead of waiting forever, and no request is left in flight."""
    box = new_box(fake, messages=20)
    provider = provider_for(box, page_size=2)
    run = provider.full_sync()
    next(run)
    provider.close()

    with pytest.raises(ProviderError):
        for _ in run:
            pass
    assert box.concurrency().in_flight == 0
