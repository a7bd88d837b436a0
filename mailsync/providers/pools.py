"""Process-wide homes for what provider instances share: made on first use, forgotten on fork."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

_V = TypeVar("_V")

# A connection pool no provider has held for this long is closed. Mailboxes of a refresh round
# follow each other within milliseconds; a process that has gone quiet should not keep sockets
# open (a server would close them meanwhile, and one closing down waits for us to close them).
IDLE_SECONDS = 2.0
_SWEEP_EVERY = 0.5


class _Registry(Generic[_V]):
    """Values by key for the whole process. Creating a registry makes nothing else: a parent
    that imports the providers and forks (mailsync/orchestration/zygote.py) must hold no socket
    a child could inherit."""

    def __init__(self, name: str, dispose: Callable[[_V], None] | None = None) -> None:
        self.name = name
        self._dispose = dispose
        self._lock = threading.Lock()
        self._items: dict[Hashable, Any] = {}
        _REGISTRIES.append(self)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        """Dispose of every value (close its connections). Only while no provider uses them."""
        with self._lock:
            items, self._items = self._items, {}
        if self._dispose is not None:
            for item in items.values():
                self._dispose(self._value(item))

    def _value(self, item: Any) -> _V:
        value: _V = item
        return value

    def _forget(self) -> None:
        # In a forked child: the sockets behind these values are the parent's too, so closing
        # them (a TLS close_notify, a shutdown) would break the parent's connections. Dropping
        # them only closes the child's file descriptors. The lock may have been held by a thread
        # that does not exist here, hence a new one.
        self._lock = threading.Lock()
        self._items = {}


class Shared(_Registry[_V]):
    """One value per key, made by `make` the first time the key is asked for, kept for good
    (for values without connections)."""

    def get(self, key: Hashable, make: Callable[[], _V]) -> _V:
        with self._lock:
            try:
                value: _V = self._items[key]
            except KeyError:
                # Made under the lock: threads starting at once then make it once, not each.
                value = self._items[key] = make()
            return value


class Expiring(_Registry[_V]):
    """Values forgotten `ttl` seconds after they were stored; beyond `capacity` keys the oldest
    is dropped first."""

    def __init__(
        self,
        name: str,
        ttl: float,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name)
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock

    def get(self, key: Hashable) -> _V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            stored_at, value = found
            if self._clock() - stored_at >= self.ttl:
                del self._items[key]
                return None
            result: _V = value
            return result

    def put(self, key: Hashable, value: _V) -> None:
        with self._lock:
            self._items.pop(key, None)
            while len(self._items) >= self.capacity:
                del self._items[next(iter(self._items))]
            self._items[key] = (self._clock(), value)

    def _value(self, item: Any) -> _V:
        value: _V = item[1]
        return value


@dataclass(eq=False)
class _Lent(Generic[_V]):
    value: _V
    borrowers: int = 0
    idle_since: float = 0.0


class Loan(Generic[_V]):
    """One provider's use of a pooled value, from borrow() to release()."""

    def __init__(self, registry: Pooled[_V], entry: _Lent[_V]) -> None:
        self._registry = registry
        self._entry: _Lent[_V] | None = entry
        self.value = entry.value

    def release(self) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._registry._give_back(entry)


class Pooled(_Registry[_V]):
    """Values that hold connections, one per key: lent to providers, and closed (`dispose`) once
    no provider has held one for IDLE_SECONDS."""

    def __init__(self, name: str, dispose: Callable[[_V], None]) -> None:
        super().__init__(name, dispose)
        _POOLED.append(self)

    def borrow(self, key: Hashable, make: Callable[[], _V]) -> Loan[_V]:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                entry = self._items[key] = _Lent(make())
            entry.borrowers += 1
        _SWEEPER.ensure_running()
        return Loan(self, entry)

    def _give_back(self, entry: _Lent[_V]) -> None:
        with self._lock:
            entry.borrowers -= 1
            if entry.borrowers == 0:
                entry.idle_since = time.monotonic()

    def _value(self, item: Any) -> _V:
        value: _V = item.value
        return value

    def sweep(self, now: float) -> None:
        with self._lock:
            idle = [
                key
                for key, entry in self._items.items()
                if entry.borrowers == 0 and now - entry.idle_since >= IDLE_SECONDS
            ]
            gone = [self._items.pop(key) for key in idle]
        for entry in gone:
            assert self._dispose is not None
            self._dispose(entry.value)


class _Sweeper:
    """A daemon thread closing idle pools, running only while some pool holds anything."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mailsync-pool-sweeper", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(_SWEEP_EVERY)
            for registry in list(_POOLED):
                registry.sweep(time.monotonic())
            with self._lock:
                # Under the lock a borrower takes before starting a sweeper: one that borrowed
                # after the check below starts a new thread, one that borrowed before is seen.
                if not any(len(registry) for registry in _POOLED):
                    self._thread = None
                    return


class IdlePool(Generic[_V]):
    """Idle objects that serve one user at a time: `take` one (None: make a new one), `give` it
    back when done. At most `limit` are kept; the last one given back is the next one taken,
    since its connections are the least likely to have been closed by the server meanwhile."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._idle: list[_V] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle)

    def take(self) -> _V | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def give(self, item: _V) -> bool:
        """Keep `item` for the next user; False when the pool is full (the caller disposes)."""
        with self._lock:
            if len(self._idle) >= self.limit:
                return False
            self._idle.append(item)
            return True

    def drain(self) -> list[_V]:
        with self._lock:
            idle, self._idle = self._idle, []
        return idle


_REGISTRIES: list[_Registry[Any]] = []
_POOLED: list[Pooled[Any]] = []
_SWEEPER = _Sweeper()


def sizes() -> dict[str, int]:
    """How many keys each registry holds, by name."""
    return {registry.name: len(registry) for registry in _REGISTRIES}


def close_all() -> None:
    """Close every shared connection pool; for shutdown and tests, never while syncs run."""
    for registry in _REGISTRIES:
        registry.clear()


def _forget_all() -> None:
    global _SWEEPER
    for registry in _REGISTRIES:
        registry._forget()
    _SWEEPER = _Sweeper()  # the parent's thread does not exist here


# Values are made on first use, so a child forked before any has nothing to forget; one forked
# from a process that has synced must still not reuse the parent's connections.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all)
