"""TokenBuckets: the arithmetic of the general request quotas, on an injected clock."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mailsync.core.rules.token_buckets import TokenBuckets


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_spends_then_refuses_with_the_wait_for_one_token() -> None:
    """N takes succeed with Remaining N-1..0; the next is refused with Retry-After = 60/N;
    Reset is when the next token arrives."""
    clock = Clock()
    buckets = TokenBuckets(clock)
    takes = [buckets.take("k", 3) for _ in range(3)]
    assert [t.allowed for t in takes] == [True] * 3
    assert [t.remaining for t in takes] == [2, 1, 0]
    assert all(t.reset_at == clock.now + 20 for t in takes)
    refused = buckets.take("k", 3)
    assert not refused.allowed and refused.remaining == 0 and refused.retry_after == 20


def test_tokens_come_back_continuously_and_never_beyond_capacity() -> None:
    """60/N seconds give one token back, part of it gives none, a long pause refills to N
    and no further; a clock that steps back neither refills nor breaks the bucket."""
    clock = Clock()
    buckets = TokenBuckets(clock)
    for _ in range(3):
        buckets.take("k", 3)
    clock.now += 19.9
    early = buckets.take("k", 3)
    assert not early.allowed and early.retry_after == 1
    clock.now += 0.1
    assert buckets.take("k", 3).allowed
    clock.now += 3600
    full = [buckets.take("k", 3) for _ in range(4)]
    assert [t.allowed for t in full] == [True, True, True, False]
    clock.now -= 100
    assert not buckets.take("k", 3).allowed


def test_keys_are_independent() -> None:
    """Spending one key's bucket leaves every other key's full."""
    buckets = TokenBuckets(Clock())
    assert buckets.take("a", 1).allowed and not buckets.take("a", 1).allowed
    other = buckets.take("b", 1)
    assert other.allowed and other.remaining == 0


def test_racing_takes_admit_exactly_the_capacity() -> None:
    """40 threads taking from one bucket of 7 at once: exactly 7 succeed."""
    buckets = TokenBuckets(Clock())
    start = threading.Barrier(40)

    def one(_: int) -> bool:
        start.wait()
        return buckets.take("k", 7).allowed

    with ThreadPoolExecutor(40) as pool:
        assert sum(pool.map(one, range(40))) == 7


def test_memory_is_bounded_and_full_buckets_are_forgotten_first() -> None:
    """Past max_buckets keys a full bucket (one a new key would equal) is dropped before a
    spent one, so a spray of new addresses cannot reset a throttled client's bucket."""
    clock = Clock()
    buckets = TokenBuckets(clock, max_buckets=3)
    assert buckets.take("spent", 1).allowed
    buckets.take("idle", 100)
    for n in range(10):
        clock.now += 1  # long enough for the previous spray bucket to refill
        buckets.take(f"spray-{n}", 100)
        assert len(buckets) <= 3
    assert not buckets.take("spent", 1).allowed


def test_bad_arguments_are_refused() -> None:
    """A quota of less than one token, or a period that is not positive, is a bug."""
    with pytest.raises(ValueError):
        TokenBuckets(Clock()).take("k", 0)
    with pytest.raises(ValueError):
        TokenBuckets(Clock()).take("k", 1, 0)
    with pytest.raises(ValueError):
        TokenBuckets(Clock(), max_buckets=0)
