"""Per-folder delta gates of the fake Graph: a test's breakpoint between two folders of one sync.

A sync reads its folders concurrently, so "the message moved after folder A was read but before
folder B was" cannot be arranged by timing. A test holds B's delta calls, waits until A's were
answered (`answered` counts them), changes the mailbox, then releases B.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mailsync.fakes.faults import HOLD_MAX_S

_Key = tuple[str, str]  # (lower-case address, folder key)


class DeltaGates:
    """Thread-safe per (mailbox, folder key): whether its delta calls are held, how many wait at
    the gate, how many were answered (ever; a test compares with what it saw before)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held: set[_Key] = set()
        self._waiting: Counter[_Key] = Counter()
        self._answered: Counter[_Key] = Counter()

    def hold(self, address: str, folder_key: str) -> None:
        with self._changed:
            self._held.add((address.lower(), folder_key))

    def release(self, address: str, folder_key: str) -> bool:
        """Let the folder's held calls go; whether it was held."""
        with self._changed:
            key = (address.lower(), folder_key)
            held = key in self._held
            self._held.discard(key)
            self._changed.notify_all()
            return held

    @contextmanager
    def passage(self, address: str, folder_key: str) -> Iterator[None]:
        """Around answering one delta call: wait while the folder is held (at most HOLD_MAX_S,
        under the clients' timeout, so a forgotten hold slows a sync instead of failing it),
        then count the call answered once the body ran without error."""
        key = (address.lower(), folder_key)
        deadline = time.monotonic() + HOLD_MAX_S
        with self._changed:
            self._waiting[key] += 1
            try:
                while key in self._held and (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
            finally:
                self._waiting[key] -= 1
        yield
        with self._changed:
            self._answered[key] += 1

    def state(self, address: str) -> dict[str, dict[str, Any]]:
        """folder key -> {"held", "waiting", "answered"} for every folder the gates know of."""
        lower = address.lower()
        with self._changed:
            keys = {k for k in (*self._held, *self._waiting, *self._answered) if k[0] == lower}
            return {
                folder: {
                    "held": (lower, folder) in self._held,
                    "waiting": self._waiting[(lower, folder)],
                    "answered": self._answered[(lower, folder)],
                }
                for _, folder in sorted(keys)
            }
