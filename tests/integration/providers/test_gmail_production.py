"""GmailProvider at production grade: pacing to the per-user quota, retries that honour
Retry-After, resumable full syncs, reusable access tokens. Against the fake Gmail over real
HTTPS with the real Google client libraries; the pacer alone against a fake clock.

Provider facts these tests pin down (Gmail API docs, developers.google.com/gmail/api):
- per-user quota: 15,000 units per minute (6,000 for projects created from 2026-05-01);
- messages.list and messages.get cost 5 units, history.list 2, getProfile 1;
- a batch holds at most 100 calls, more than 50 is not recommended, and its parts are
  charged and throttled one by one;
- a stale startHistoryId answers 404;
- quota refusals come as 429, or as 403 with reason rateLimitExceeded/userRateLimitExceeded;
- google-api-python-client's own retry ignores Retry-After and never retries batch parts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from mailsync.fakes.client import FaultPlan
from mailsync.fakes.tls import FakeTLS, ensure_tls
from mailsync.providers.base import (
    CursorExpiredError,
    Page,
    TransientProviderError,
)
from mailsync.providers.gmail import (
    DEFAULT_QUOTA_UNITS_PER_MINUTE,
    QUOTA_COSTS,
    GmailProvider,
    Pacer,
)
from tests.support.gmail_fake import GmailFake, serve_gmail

UNPACED = 10**9  # quota_units_per_minute for tests that are not about pacing


@dataclass
class Fake(GmailFake):
    prefix: str = "prod"

    def provider(self, address: str, credentials: dict[str, Any], **kwargs: Any) -> GmailProvider:
        kwargs.setdefault("quota_units_per_minute", UNPACED)
        return super().provider(address, credentials, **kwargs)


def _serve(tls: FakeTLS, **app_kwargs: Any) -> Any:
    return serve_gmail(tls, Fake, **app_kwargs)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> FakeTLS:
    return ensure_tls(tmp_path_factory.mktemp("gmail-production-tls"))


@pytest.fixture(scope="module")
def fake(tls: FakeTLS) -> Iterator[Fake]:
    """A fake without quota limits (usage is still counted per mailbox)."""
    with _serve(tls, seed_messages=30, seed=5) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_counters(fake: Fake) -> None:
    fake.reset()  # also drops leftover queued faults


@dataclass
class FakeClock:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _apply(index: dict[str, list[str]], pages: Iterator[Page]) -> list[Page]:
    """Apply pages to a toy index (id -> labels) the way the sync applies them to the real one."""
    seen = []
    for page in pages:
        for record in page.upserts:
            index[record.provider_message_id] = sorted(record.labels)
        for gone in page.deletions:
            index.pop(gone, None)
        seen.append(page)
    return seen


# -- the pacer, against a fake clock ---------------------------------------------------------


@pytest.mark.parametrize("quota", [DEFAULT_QUOTA_UNITS_PER_MINUTE, 6_000])
def test_pacer_keeps_every_minute_within_the_quota_and_runs_close_to_it(quota: int) -> None:
    """Fact: the per-user quota is 15,000 units per minute (6,000 for projects created from
    2026-05-01). Over 20 simulated minutes of batches of 50 messages.get (250 units), no
    sliding 60 s window holds more than the quota, and the long-run rate is >= 88 % of it."""
    assert DEFAULT_QUOTA_UNITS_PER_MINUTE == 15_000
    fake = FakeClock()
    pacer = Pacer(quota, 60.0, clock=fake.clock, sleep=fake.sleep)
    grants: list[tuple[float, int]] = []
    start = fake.now
    while fake.now - start < 20 * 60:
        pacer.acquire(250)
        grants.append((fake.now, 250))
    elapsed = fake.now - start
    left = 0
    in_window = 0
    worst = 0
    for when, units in grants:
        in_window += units
        while grants[left][0] <= when - 60.0:
            in_window -= grants[left][1]
            left += 1
        worst = max(worst, in_window)
    assert worst <= quota
    assert pacer.charged / elapsed * 60 >= 0.88 * quota
    assert pacer.charged == sum(units for _, units in grants)


def test_pacer_spends_its_burst_freely_and_charges_big_calls_as_debt() -> None:
    """Within its burst the pacer does not wait; a charge larger than the bucket waits for a
    full bucket and leaves a debt that the next charge waits out, so the rate still holds."""
    fake = FakeClock()
    pacer = Pacer(6000, 60.0, clock=fake.clock, sleep=fake.sleep)  # 90 units/s, bucket 300
    assert (pacer.rate, pacer.capacity) == (90.0, 300.0)
    for _ in range(60):
        assert pacer.acquire(5) == 0.0
    assert fake.sleeps == []
    assert pacer.acquire(1) == pytest.approx(1 / 90)  # the bucket is empty now
    waited = pacer.acquire(500)  # a 100-part batch: more than the bucket holds
    assert waited == pytest.approx(300 / 90)
    assert pacer.acquire(5) == pytest.approx((200 + 5) / 90)  # the debt of 200, then 5
    with pytest.raises(ValueError):
        Pacer(0)
    with pytest.raises(ValueError):
        Pacer(100, utilization=0.99, burst=0.05)


# -- costs and batches ------------------------------------------------------------------------


def test_each_method_costs_what_gmail_charges(fake: Fake) -> None:
    """Fact: messages.list and messages.get cost 5 units, history.list 2, getProfile 1, and
    every part of a batch is charged as a call. The pacer charges exactly what the fake (which
    charges Gmail's table) counts, for a full sync and for an increment."""
    assert QUOTA_COSTS == {
        "users.getProfile": 1,
        "messages.list": 5,
        "messages.get": 5,
        "history.list": 2,
        "users.watch": 100,
        "users.stop": 50,
    }
    address, creds = fake.mailbox(messages=120)
    with fake.provider(address, creds, page_size=50, batch_size=20) as provider:
        pages = list(provider.full_sync())
        assert len(pages) == 3
        full = 1 + 3 * 5 + 120 * 5
        assert provider.pacer.charged == full
        assert fake.admin.quota(address).charged_total == full
        assert fake.stats()["batch"] == 3 + 3 + 1  # ceil(50/20) + ceil(50/20) + ceil(20/20)

        fake.add(address, 3)
        cursor = pages[-1].cursor
        assert cursor is not None
        list(provider.incremental_sync(cursor))
        assert provider.pacer.charged == full + 2 + 3 * 5
        assert fake.admin.quota(address).charged_total == full + 2 + 3 * 5


def test_batches_hold_at_most_50_parts_by_default_and_never_over_100(fake: Fake) -> None:
    """Fact: a batch holds at most 100 calls and more than 50 is not recommended. By default a
    batch carries 50 parts; 100 may be configured, 101 may not."""
    address, creds = fake.mailbox(messages=120)
    with fake.provider(address, creds) as provider:
        assert provider.batch_size == 50
        assert len(list(provider.full_sync())[-1].upserts) == 120
    assert fake.stats()["batch"] == 3 and fake.stats()["messages.get"] == 120
    GmailProvider(address, creds, fake.endpoints, batch_size=100).close()
    with pytest.raises(ValueError):
        GmailProvider(address, creds, fake.endpoints, batch_size=101)


# -- resumable full syncs -----------------------------------------------------------------------


def test_resume_from_a_checkpoint_lists_no_page_twice_and_skips_none(fake: Fake) -> None:
    """A full sync stopped after page k resumes in a NEW provider from page k's checkpoint: the
    union of pages is the fake's message set, the fake's counts show no page listed or fetched
    twice (and no second getProfile), every page carries messagesTotal as total_estimate, and
    the final cursor is the history id read at the very start, so changes made while the sync
    was stopped come with the next increment."""
    address, creds = fake.mailbox(messages=230)
    expected = set(fake.ids(address))
    first = fake.provider(address, creds, page_size=50, batch_size=25)
    before: list[Page] = []
    for page in first.full_sync():
        before.append(page)
        if len(before) == 2:
            break  # the process "dies" after page k = 2
    first.close()
    assert all(p.checkpoint and p.cursor is None for p in before)
    assert [p.total_estimate for p in before] == [230, 230]
    assert fake.stats()["messages.list"] == 2 and fake.stats()["messages.get"] == 100

    # Meanwhile: a new message (newer than everything listed) and a not-yet-listed one deleted.
    (added,) = fake.add(address, 1)
    listed = {r.provider_message_id for p in before for r in p.upserts}
    doomed = next(i for i in fake.ids(address)[::-1] if i not in listed)
    fake.admin.delete_message(address, doomed)

    checkpoint = before[-1].checkpoint
    assert checkpoint is not None
    with fake.provider(address, creds, page_size=50, batch_size=25) as second:
        after = list(second.full_sync(checkpoint))
        assert [len(p.upserts) for p in after] == [50, 50, 29]
        assert all(p.total_estimate == 230 for p in after)
        union = listed | {r.provider_message_id for p in after for r in p.upserts}
        assert union == expected - {doomed}
        assert not listed & {r.provider_message_id for p in after for r in p.upserts}
        stats = fake.stats()
        assert stats["profile"] == 1  # only the first run read the profile
        assert stats["messages.list"] == 5  # 2 + 3: no page listed twice
        assert stats["messages.get"] == 229  # every message fetched exactly once

        cursor = after[-1].cursor
        assert cursor is not None
        index: dict[str, list[str]] = {}
        _apply(index, iter([*before, *after]))
        _apply(index, second.incremental_sync(cursor))
        assert set(index) == set(fake.ids(address))
        assert added in index and doomed not in index

        # The last page's checkpoint resumes to "nothing left": the cursor again, no calls.
        fake.reset()
        last = after[-1].checkpoint
        assert last is not None
        (done,) = list(second.full_sync(last))
        assert (done.upserts, done.cursor, done.total_estimate) == ([], cursor, 230)
        assert fake.stats() == {}


def test_unusable_checkpoint_raises_cursor_expired(fake: Fake) -> None:
    """A checkpoint that is not ours, or whose page token Gmail refuses (400), raises
    CursorExpiredError: the caller starts the full sync over."""
    address, creds = fake.mailbox(messages=3)
    with fake.provider(address, creds) as provider:
        for bad in ("", "{}", "not json", json.dumps({"v": 1, "historyId": "x"})):
            with pytest.raises(CursorExpiredError):
                list(provider.full_sync(bad))
        forged = json.dumps({"v": 1, "historyId": "12", "pageToken": "bm9wZQ", "total": 3})
        with pytest.raises(CursorExpiredError):
            list(provider.full_sync(forged))
        assert fake.stats()["messages.list"] == 1  # a 400 is not retried


# -- retries ------------------------------------------------------------------------------------


def test_single_calls_retry_429_5xx_and_quota_403_honouring_retry_after(fake: Fake) -> None:
    """Facts: quota refusals come as 429 or as 403 userRateLimitExceeded; the client library's
    own retry ignores Retry-After. getProfile, messages.list and history.list that meet 429,
    403 (quota) or 503 are retried after the Retry-After the server asked for, and a sync
    completes whole."""
    address, creds = fake.mailbox(messages=7)
    sleeps: list[float] = []
    with fake.provider(address, creds, sleep=sleeps.append) as provider:
        fake.fault("profile", 429, retry_after=2)
        fake.fault("messages.list", 403, retry_after=3)
        index: dict[str, list[str]] = {}
        pages = _apply(index, provider.full_sync())
        assert set(index) == set(fake.ids(address))
        assert sleeps == [2.0, 3.0]
        stats = fake.stats()
        assert stats["profile"] == 2 and stats["messages.list"] == 2

        fake.add(address, 2)
        sleeps.clear()
        fake.fault("history.list", 503, count=2)  # no Retry-After: exponential backoff
        cursor = pages[-1].cursor
        assert cursor is not None
        _apply(index, provider.incremental_sync(cursor))
        assert set(index) == set(fake.ids(address))
        assert sleeps == [provider.call_retry.backoff, provider.call_retry.backoff * 2]


def test_batch_parts_and_whole_batches_are_retried_after_retry_after(fake: Fake) -> None:
    """Fact: the client library never retries batch parts. Parts refused with 429 or quota 403
    are retried after their Retry-After; a batch refused as a whole (429 on the envelope) is
    retried the same way; the sync ends with every message."""
    address, creds = fake.mailbox(messages=12)
    sleeps: list[float] = []
    with fake.provider(address, creds, batch_size=10, sleep=sleeps.append) as provider:
        fake.fault("messages.get", 429, count=2, retry_after=2)
        fake.fault("batch", 429, retry_after=1)
        index: dict[str, list[str]] = {}
        _apply(index, provider.full_sync())
        assert set(index) == set(fake.ids(address))
        assert sleeps == [1.0, 2.0]  # the envelope first, then the two refused parts
        assert fake.stats()["messages.get"] == 12 + 2
        assert fake.stats()["batch"] == 1 + 2 + 1  # refused, first of two, its retry, second


def test_twenty_percent_faults_still_end_with_exactly_the_mailbox(fake: Fake) -> None:
    """With 20 % of the mailbox's calls (batch parts included) failing with 429/500/503, a full
    sync (resumed from its last checkpoint whenever a transient error escapes, as the job
    would) and then an increment over adds, deletions and label changes end with exactly the
    fake's message ids and labels; every retry waited at least the Retry-After. (Three
    attempts per call instead of five, so that some errors do escape and resumes happen.)"""
    address, creds = fake.mailbox(messages=400)
    plan = FaultPlan(share=0.2, statuses=[429, 500, 503], retry_after=1, seed=1)
    fake.admin.set_faults(address, plan)
    sleeps: list[float] = []
    escaped: list[TransientProviderError] = []

    def until_done(run: Callable[[GmailProvider], list[Page]]) -> None:
        for _ in range(20):
            with fake.provider(address, creds, page_size=100, sleep=sleeps.append) as provider:
                provider.part_retry = provider.call_retry = replace(provider.call_retry, attempts=3)
                try:
                    pages = run(provider)
                except TransientProviderError as error:
                    escaped.append(error)
                    continue
                if pages and pages[-1].cursor:
                    return
        raise AssertionError("no progress in 20 attempts")

    index: dict[str, list[str]] = {}
    progress: list[Page] = []

    def full(provider: GmailProvider) -> list[Page]:
        checkpoint = progress[-1].checkpoint if progress else None
        for page in provider.full_sync(checkpoint):
            _apply(index, iter([page]))
            progress.append(page)
        return progress

    until_done(full)
    assert index == {k: sorted(v) for k, v in fake.admin.labels(address).items()}

    ids = fake.ids(address)
    fake.add(address, 20)
    for mid in ids[:10]:
        fake.admin.delete_message(address, mid)
    for mid in ids[10:30]:
        fake.admin.modify_labels(
            address, mid, add=["Label_7", "STARRED"], remove=["UNREAD", "INBOX"]
        )
    cursor = progress[-1].cursor
    assert cursor is not None

    def increment(provider: GmailProvider) -> list[Page]:
        staged = dict(index)  # an increment is applied whole or retried whole
        pages = _apply(staged, provider.incremental_sync(cursor))
        index.clear()
        index.update(staged)
        return pages

    until_done(increment)
    assert index == {k: sorted(v) for k, v in fake.admin.labels(address).items()}
    faults = fake.admin.fault_stats(address)
    assert faults.injected >= 0.15 * faults.calls > 0
    assert sleeps and min(sleeps) >= 1.0
    assert escaped  # some syncs did die half-way and were resumed


# -- quota --------------------------------------------------------------------------------------


def test_paced_full_sync_runs_at_the_quota_without_being_refused(tls: FakeTLS) -> None:
    """Against a fake enforcing a per-user quota (time-scaled: 5,250 units per 3 s window, about
    a third of what client and fake manage unpaced), a full sync of 2,000 messages paced to
    that quota is never refused and never charged above the ceiling: it runs at the quota,
    not into it. How close to the ceiling it gets is a speed figure, measured by
    `python -m bench quota` (BENCHMARKS.md), not asserted here."""
    units, window = 5_250, 3.0
    app = {"seed_messages": 0, "quota_units_per_minute": units, "quota_window_seconds": window}
    with _serve(tls, **app) as fake:
        address, creds = fake.mailbox(messages=2_000)
        pacer = Pacer(units, window)
        with fake.provider(address, creds, pacer=pacer) as provider:
            started = time.monotonic()
            count = sum(len(p.upserts) for p in provider.full_sync())
            elapsed = time.monotonic() - started
        usage = fake.admin.quota(address)
        assert count == 2_000
        assert usage.rejected == 0
        assert usage.charged_total == 1 + 4 * 5 + 2_000 * 5
        share = usage.charged_total / elapsed / (units / window)
        print(f"achieved {share:.1%} of the quota ceiling in {elapsed:.2f}s")
        assert share <= 1.0


def test_refusals_of_an_overrun_quota_are_waited_out(tls: FakeTLS) -> None:
    """Fact: quota refusals come as 429 rateLimitExceeded (or 403 userRateLimitExceeded) with
    Retry-After. A client whose pacer believes in a far larger quota is refused by the fake,
    waits out each Retry-After, and still ends with every message."""
    app = {"seed_messages": 0, "quota_units_per_minute": 400, "quota_window_seconds": 1.0}
    with _serve(tls, **app) as fake:
        address, creds = fake.mailbox(messages=120)
        sleeps: list[float] = []

        def sleep(seconds: float, sleeps: list[float] = sleeps) -> None:
            sleeps.append(seconds)
            time.sleep(seconds)

        with fake.provider(address, creds, sleep=sleep) as provider:
            count = sum(len(p.upserts) for p in provider.full_sync())
        assert count == 120
        assert fake.admin.quota(address).rejected > 0
        assert sleeps and min(sleeps) >= 1.0  # the fake's Retry-After, not a shorter backoff


# -- reusable access tokens ---------------------------------------------------------------------


def test_auth_state_round_trip_skips_the_token_endpoint(
    fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    """auth_state() hands out the access token fetched during a provider's life; a new provider
    seeded with it syncs without a token call while it is valid, reports no change, refreshes
    once the token is refused, ignores state issued for another mailbox, and the token never
    reaches a log."""
    caplog.set_level(logging.DEBUG)
    address, creds = fake.mailbox(messages=4)
    with fake.provider(address, creds) as first:
        assert first.auth_state() is None  # nothing fetched yet
        list(first.full_sync())
        state = first.auth_state()
    assert state is not None and fake.stats()["token"] == 1
    token = json.loads(state)["token"]

    fake.reset()
    with fake.provider(address, creds, auth_state=state) as second:
        assert len(list(second.full_sync())[-1].upserts) == 4
        assert second.auth_state() is None  # unchanged: nothing new to store
    assert "token" not in fake.stats()

    fake.admin.expire_tokens()
    with fake.provider(address, creds, auth_state=state) as third:
        list(third.full_sync())
        renewed = third.auth_state()
    assert renewed is not None and json.loads(renewed)["token"] != token
    assert fake.stats()["token"] == 1

    other, other_creds = fake.mailbox(messages=1)
    fake.reset()
    with fake.provider(other, other_creds, auth_state=renewed) as stranger:
        list(stranger.full_sync())
    assert fake.stats()["token"] == 1  # state for another mailbox was not used

    for secret in (token, json.loads(renewed)["token"]):
        assert secret not in caplog.text
