"""The slot store the sync rules take slots from: a protocol, so the rules need no Prefect.

Prefect's global concurrency limits implement it (mailsync/orchestration/limits.py): a slot
is taken with a lease that ends by itself, so a holder that dies frees it within one lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class LimitSpec:
    """A named limit of `limit` slots."""

    name: str
    limit: int


@dataclass(frozen=True)
class Refusal:
    """A take that found the limit full; `retry_after` is the store's hint in seconds."""

    retry_after: float | None


class SlotStore(Protocol):
    def take(
        self, specs: list[LimitSpec], lease_seconds: float, *, ensure_first: bool = True
    ) -> str | Refusal:
        """One slot of every limit or none: the lease id, or a Refusal when one is full."""
        ...

    def release(self, lease_id: str) -> None:
        """Give the lease's slots back."""
        ...

    def active_slots(self, name: str) -> int:
        """How many slots of the limit are taken now."""
        ...
