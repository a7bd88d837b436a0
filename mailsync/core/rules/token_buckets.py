"""Token buckets for the general request quotas, kept in the process: no call per request.

A bucket holds up to `capacity` tokens and refills continuously at `capacity` per `period`
seconds (a quota of N a minute is `TokenBuckets(capacity=N, period=60)` per key). A take
either spends a whole token or is refused with the seconds until one is there.

    buckets = TokenBuckets(clock=time.time)
    taken = buckets.take("key:abc", capacity=600, period=60)
    taken.allowed, taken.remaining, taken.reset_at, taken.retry_after

Kept in memory on purpose: the general quotas guard against floods, so they must cost
nothing per request and hold when Prefect or the database are slow or down. The price is
that each API process counts on its own (with P processes behind a balancer a client gets up
to P x N a minute); the on-demand sync quota and the 409 rule, which must be exact across
processes, stay on Prefect's concurrency limits. At most `max_buckets` keys are remembered:
full buckets (equal to a new one) are forgotten first, then the least recently used.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class Take:
    """The outcome of one take; `reset_at` is when the next token is there (epoch seconds,
    now when the bucket is full), `retry_after` whole seconds until a take can succeed."""

    allowed: bool
    remaining: int
    reset_at: float
    retry_after: int


@dataclass
class _Bucket:
    tokens: float
    updated: float
    capacity: int
    rate: float

    def full(self, now: float) -> bool:
        return self.tokens + max(0.0, now - self.updated) * self.rate >= self.capacity


class TokenBuckets:
    """Thread-safe buckets by key; the clock is injectable so tests control time."""

    def __init__(self, clock: Clock = time.time, max_buckets: int = 100_000) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self._clock = clock
        self._max = max_buckets
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def take(self, key: str, capacity: int, period: float = 60.0) -> Take:
        """Spend one token of `key`'s bucket, or be refused when less than one is left."""
        if capacity < 1 or period <= 0:
            raise ValueError("capacity must be at least 1 and period positive")
        rate = capacity / period
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(capacity), now, capacity, rate)
                self._evict(now)
            else:
                self._buckets.move_to_end(key)
                # A clock that steps back refills nothing (and takes nothing back).
                bucket.capacity, bucket.rate = capacity, rate
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(capacity), bucket.tokens + elapsed * rate)
                bucket.updated = max(bucket.updated, now)
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            tokens = bucket.tokens
        remaining = math.floor(tokens)
        to_next = 0.0 if tokens >= capacity else (math.floor(tokens) + 1 - tokens) / rate
        to_one = max(0.0, (1.0 - tokens) / rate)
        return Take(
            allowed=allowed,
            remaining=remaining,
            reset_at=now + to_next,
            retry_after=0 if allowed else max(1, math.ceil(to_one - 1e-9)),
        )

    def _evict(self, now: float) -> None:
        if len(self._buckets) <= self._max:
            return
        # Full buckets first: forgetting one changes nothing. Bounded scan keeps a take O(1)
        # amortised; the least recently used goes when no full one is found.
        for key in list(itertools.islice(self._buckets, 64)):
            if self._buckets[key].full(now):
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)
