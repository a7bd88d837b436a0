"""Gmail's per-user quota: what each method costs, and the token bucket that paces a mailbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Gmail's per-method quota units (developers.google.com/gmail/api/reference/quota); a batch is
# charged part by part.
QUOTA_COSTS = {
    "users.getProfile": 1,
    "messages.list": 5,
    "messages.get": 5,
    "history.list": 2,
    "users.watch": 100,
    "users.stop": 50,
}
DEFAULT_QUOTA_UNITS_PER_MINUTE = 15_000  # per user; 6,000 for projects created from 2026-05-01


class Pacer:
    """A smooth token bucket keeping one mailbox's calls within `units_per_window`.

    Units refill continuously at `utilization` of the quota rate, and at most `burst` of the
    quota is held at once, so any window of `window_s` sees at most (burst + utilization) of
    the quota (or utilization plus one call, if a call is bigger than the burst), leaving the
    rest as slack for network jitter and the server's own bookkeeping. A charge larger than
    the bucket waits for a full bucket and leaves a debt the next charges wait out, so the
    long-run rate holds whatever the call sizes. `clock` and `sleep` are injectable so tests
    need not wait. One pacer per mailbox: Gmail's quota is per user.
    """

    def __init__(
        self,
        units_per_window: float,
        window_s: float = 60.0,
        *,
        utilization: float = 0.9,
        burst: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if units_per_window <= 0 or window_s <= 0:
            raise ValueError("a pacer needs a positive quota and window")
        if utilization <= 0 or burst <= 0 or utilization + burst > 1:
            raise ValueError("utilization and burst must be positive and add up to at most 1")
        self.units_per_window = units_per_window
        self.window_s = window_s
        self.rate = units_per_window * utilization / window_s  # units per second
        self.capacity = units_per_window * burst
        self.charged = 0.0  # units granted so far
        self.waited = 0.0  # seconds spent waiting so far
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def acquire(self, units: float) -> float:
        """Wait until `units` may be spent, spend them, and return the seconds waited."""
        with self._lock:
            now = self._clock()
            if now > self._stamp:
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
            need = min(units, self.capacity)
            waited = 0.0
            if self._tokens < need:
                waited = (need - self._tokens) / self.rate
                self._sleep(waited)
                # The sleep earned `need`; a clock that ran further earns the excess too, one
                # that ran shorter (an early wake-up) is treated as borrowed time.
                ready = self._stamp + waited
                now = self._clock()
                extra = max(0.0, now - ready) * self.rate
                self._tokens = min(self.capacity, need + extra)
                self._stamp = max(now, ready)
            self._tokens -= units
            self.charged += units
            self.waited += waited
            return waited
