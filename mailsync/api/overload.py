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
- one client address holds at most `max_in_flight_per_client` of the requests, and one
  caller (an API key) at most `max_in_flight_sync_per_caller` of the triggers (half, by
  default): a client trickling its bodies, or a tenant's burst of triggers, leaves the other
  half to everyone else. A request over its share waits like any other (behind nobody: the
  slots freed go to the first waiter under its share);
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
import hashlib
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
    __slots__ = ("future", "granted", "key")

    def __init__(self, future: asyncio.Future[None], key: str) -> None:
        self.future = future
        self.key = key
        self.granted = False  # a releasing holder handed its slot to this waiter


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Gate:
    """At most `capacity` holders at once, and at most `share` of them with one key (a client
    address, an API key); waiters get freed slots first come, first served, skipping those
    whose key holds its share already.

    Safe to share between event loops and threads (a TestClient runs its own loop): the
    counts are guarded by a lock that is never held across an await, and a waiter on another
    loop is woken through that loop.
    """

    def __init__(self, name: str, capacity: int, share: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"gate {name}: capacity must be at least 1")
        self.name, self.capacity = name, capacity
        self.share = min(share or capacity, capacity)
        self._lock = threading.Lock()
        self._in_use = 0
        self._by_key: dict[str, int] = {}
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

    def held_by(self, key: str) -> int:
        """How many slots `key` holds now."""
        with self._lock:
            return self._by_key.get(key, 0)

    def _may_hold(self, key: str) -> bool:
        return self._by_key.get(key, 0) < self.share

    def _hold(self, key: str) -> None:
        self._by_key[key] = self._by_key.get(key, 0) + 1

    async def acquire(self, timeout: float, key: str = "") -> bool:
        """Take a slot for `key`, waiting up to `timeout` seconds; False when none freed in
        time."""
        with self._lock:
            ahead = any(self._may_hold(w.key) for w in self._waiters)
            if self._in_use < self.capacity and self._may_hold(key) and not ahead:
                self._in_use += 1
                self._hold(key)
                self.peak = max(self.peak, self._in_use)
                self.admitted += 1
                return True
            if timeout <= 0:
                self.shed += 1
                return False
            waiter = _Waiter(asyncio.get_running_loop().create_future(), key)
            self._waiters.append(waiter)
        try:
            await asyncio.wait((waiter.future,), timeout=timeout)
        except BaseException:  # cancelled while waiting: give back a slot handed over meanwhile
            if not self._withdraw(waiter, count_shed=False):
                self.release(key)
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

    def release(self, key: str = "") -> None:
        """Give `key`'s slot back: to the longest waiter whose key is under its share (the
        count is unchanged then), otherwise to the pool."""
        with self._lock:
            held = self._by_key.get(key, 0) - 1
            if held > 0:
                self._by_key[key] = held
            else:
                self._by_key.pop(key, None)
            for waiter in list(self._waiters):
                if not self._may_hold(waiter.key):
                    continue
                self._waiters.remove(waiter)
                try:
                    waiter.future.get_loop().call_soon_threadsafe(_wake, waiter.future)
                except RuntimeError:  # its event loop is closed: nobody is waiting there
                    continue
                waiter.granted = True
                self._hold(waiter.key)
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
        general, sync = (
            settings.max_in_flight,
            min(settings.max_in_flight_sync, settings.max_in_flight),
        )
        return cls(
            general=Gate("requests", general, settings.max_in_flight_per_client or _share(general)),
            sync=Gate(
                "sync triggers", sync, settings.max_in_flight_sync_per_caller or _share(sync)
            ),
            health=Gate("health", settings.health_max_in_flight),
            wait_seconds=settings.overload_wait_seconds,
        )

    def for_request(self, scope: Scope) -> tuple[tuple[Gate, str], ...]:
        """The gates a request must pass with the key each counts it under, narrowest first
        (so a trigger waiting for a trigger slot holds no general slot meanwhile)."""
        path = str(scope.get("path", ""))
        if path == HEALTH_PATH:
            return ((self.health, ""),)
        address = client_address(scope)
        if scope.get("method") == "POST" and path.rstrip("/") == SYNC_PATH:
            return ((self.sync, caller_key(scope) or address), (self.general, address))
        return ((self.general, address),)


def _share(capacity: int) -> int:
    """What one key may hold of a gate: half of it (at least one), so a client or a tenant
    alone can never take every slot from the others."""
    return max(1, capacity // 2)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "addr:?"


def caller_key(scope: Scope) -> str | None:
    """Who a trigger is for, before authentication: a digest of its credentials (one tenant's
    key counts as one caller however many addresses it comes from)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization" and value:
            return "key:" + hashlib.sha256(value).hexdigest()[:16]
    return None


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
        held: list[tuple[Gate, str]] = []
        try:
            for gate, key in self.gates.for_request(scope):
                if not await gate.acquire(deadline - time.monotonic(), key):
                    await self._shed(scope, send, gate)
                    return
                held.append((gate, key))
            await self.app(scope, receive, send)
        finally:
            for gate, key in reversed(held):
                gate.release(key)

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
