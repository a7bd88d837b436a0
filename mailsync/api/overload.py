"""Load shedding: a cap on requests in flight per API process, and a quick 503 beyond it.

Why: every `POST /v1/email/sync` makes two Prefect writes (the quota lease and the flow run)
and Prefect's SQLite database serialises them. Unbounded, 64 concurrent triggers made every
request slow (BENCHMARKS.md, "Trigger latency": 249 of 300 not accepted, 109 client timeouts
at 60 s). With a cap the work in flight stays what Prefect can do, and the rest is told at
once to come back.

The rules, per process (each uvicorn worker has its own gates):

- at most `max_in_flight` requests are served at once (every route but /health);
- of those, at most `max_in_flight_sync` are `POST /v1/email/sync`, so triggers cannot take
  every slot from the cheap reads (`GET /v1/email/sync/{id}` stays served while triggers
  queue);
- /health has `health_max_in_flight` slots of its own, outside the others, so a load
  balancer still hears from a busy process (and a flood of health checks cannot crowd out
  real requests);
- a request that finds its gate full waits, first come first served, up to
  `overload_wait_seconds` in total for its slots; then it is answered 503
  `service_unavailable` with `Retry-After: 1` or `2` (spread, so refused clients do not all
  come back in the same second) and `Connection: close`.

A shed request is refused before its body is read and before anything touches the database or
Prefect (this sits outside the rate limiter, which asks Prefect): it creates no job, takes no
quota slot and no request-quota token. An admitted request holds its slots until its response
has been sent, including the time its body takes to arrive (bounded by
`body_timeout_seconds`, middleware.py).

Why not uvicorn's `--limit-concurrency`: it counts open connections (idle keep-alive ones
too) as well as requests, answers at once without waiting, and its 503 is plain text without
Retry-After, X-Request-ID or the error envelope. `mailsync up` still sets it, far above these
caps, as a backstop (`api_max_connections`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from mailsync.api.middleware import send_error, uncounted_headers
from mailsync.settings import Settings

log = logging.getLogger(__name__)

SYNC_PATH = "/v1/email/sync"
HEALTH_PATH = "/health"
_LOG_EVERY_S = 5.0


class _Waiter:
    __slots__ = ("future", "granted")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.granted = False  # a releasing holder handed its slot to this waiter


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Gate:
    """At most `capacity` holders at once; waiters get freed slots first come, first served.

    Safe to share between event loops and threads (a TestClient runs its own loop): the
    counts are guarded by a lock that is never held across an await, and a waiter on another
    loop is woken through that loop.
    """

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"gate {name}: capacity must be at least 1")
        self.name, self.capacity = name, capacity
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiters: deque[_Waiter] = deque()
        self.peak = 0  # the most holders ever at once
        self.admitted = 0
        self.shed = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to `timeout` seconds; False when none freed in time."""
        with self._lock:
            if self._in_use < self.capacity and not self._waiters:
                self._in_use += 1
                self.peak = max(self.peak, self._in_use)
                self.admitted += 1
                return True
            if timeout <= 0:
                self.shed += 1
                return False
            waiter = _Waiter(asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
        try:
            await asyncio.wait((waiter.future,), timeout=timeout)
        except BaseException:  # cancelled while waiting: give back a slot handed over meanwhile
            if not self._withdraw(waiter, count_shed=False):
                self.release()
            raise
        return not self._withdraw(waiter, count_shed=True)

    def _withdraw(self, waiter: _Waiter, *, count_shed: bool) -> bool:
        """Leave the queue unless a slot was handed over; True when the waiter left."""
        with self._lock:
            if waiter.granted:
                self.admitted += 1
                return False
            self._waiters.remove(waiter)
            if count_shed:
                self.shed += 1
            return True

    def release(self) -> None:
        """Give the slot back: to the longest waiter if there is one (the count is unchanged
        then), otherwise to the pool."""
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                try:
                    waiter.future.get_loop().call_soon_threadsafe(_wake, waiter.future)
                except RuntimeError:  # its event loop is closed: nobody is waiting there
                    continue
                waiter.granted = True
                return
            self._in_use -= 1


@dataclass
class Gates:
    """The gates of one app (one process); `app.state.overload`."""

    general: Gate
    sync: Gate
    health: Gate
    wait_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Gates:
        return cls(
            general=Gate("requests", settings.max_in_flight),
            sync=Gate("sync triggers", min(settings.max_in_flight_sync, settings.max_in_flight)),
            health=Gate("health", settings.health_max_in_flight),
            wait_seconds=settings.overload_wait_seconds,
        )

    def for_request(self, scope: Scope) -> tuple[Gate, ...]:
        """The gates a request must pass, narrowest first (so a trigger waiting for a trigger
        slot holds no general slot meanwhile)."""
        path = str(scope.get("path", ""))
        if path == HEALTH_PATH:
            return (self.health,)
        if scope.get("method") == "POST" and path.rstrip("/") == SYNC_PATH:
            return (self.sync, self.general)
        return (self.general,)


class OverloadMiddleware:
    """Admit a request once it holds its gates' slots; shed it with 503 when they do not free
    within the wait bound (see the module docstring). Sits inside RequestIdMiddleware (its
    503s carry X-Request-ID) and outside everything that reads the body or asks Prefect."""

    def __init__(self, app: ASGIApp, gates: Gates) -> None:
        self.app, self.gates = app, gates
        self._log_lock = threading.Lock()
        self._last_log = 0.0
        self._unlogged = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.gates.wait_seconds
        held: list[Gate] = []
        try:
            for gate in self.gates.for_request(scope):
                if not await gate.acquire(deadline - time.monotonic()):
                    await self._shed(scope, send, gate)
                    return
                held.append(gate)
            await self.app(scope, receive, send)
        finally:
            for gate in reversed(held):
                gate.release()

    async def _shed(self, scope: Scope, send: Send, gate: Gate) -> None:
        self._note_shed(gate)
        retry_after = random.choice((1, 2))
        await send_error(
            scope,
            send,
            503,
            "service_unavailable",
            f"the server is busy ({gate.capacity} {gate.name} in flight, none finished within "
            f"{self.gates.wait_seconds:g} s); retry in {retry_after} s",
            uncounted_headers(scope, {"Retry-After": str(retry_after), "Connection": "close"}),
        )

    def _note_shed(self, gate: Gate) -> None:
        # One warning per few seconds at most: under overload a line per request is more load.
        with self._log_lock:
            self._unlogged += 1
            now = time.monotonic()
            if now - self._last_log < _LOG_EVERY_S:
                return
            count, self._unlogged, self._last_log = self._unlogged, 0, now
        log.warning(
            "overloaded: shed %d request(s) since the last report (%s: %d in flight, %d waiting)",
            count,
            gate.name,
            gate.in_use,
            gate.waiting,
        )
