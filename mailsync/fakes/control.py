"""What both fakes share: request counters and injected faults, driven through /_admin."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from fastapi import APIRouter
from pydantic import BaseModel, Field


class FaultSpec(BaseModel):
    """Answer the next `count` calls of `operation` with `status` (and Retry-After if given),
    after letting `after` calls through first (so a test can break a sync at its Nth page
    without racing the client)."""

    operation: str
    status: int = 503
    count: int = 1
    retry_after: int | None = None
    after: int = Field(default=0, ge=0)


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: int | None
    skip: int = 0


class FakeControl:
    """Thread-safe request counts per operation and a queue of faults to inject."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._faults: dict[str, list[_Fault]] = {}

    def record(self, operation: str) -> _Fault | None:
        """Count one call of `operation`; return the fault to answer it with, if any."""
        with self._lock:
            self.counts[operation] += 1
            queue = self._faults.get(operation) or []
            while queue:
                fault = queue[0]
                if fault.remaining <= 0:
                    queue.pop(0)
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.remaining -= 1
                return fault
            return None

    def add_fault(self, spec: FaultSpec) -> None:
        with self._lock:
            self._faults.setdefault(spec.operation, []).append(
                _Fault(spec.status, spec.count, spec.retry_after, spec.after)
            )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self._faults.clear()

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/_admin", tags=["admin"])

        @router.get("/stats")
        def stats() -> dict[str, dict[str, int]]:
            return {"requests": self.snapshot()}

        @router.post("/stats/reset")
        def reset_stats() -> dict[str, bool]:
            self.reset()
            return {"ok": True}

        @router.post("/faults")
        def add_fault(spec: FaultSpec) -> dict[str, bool]:
            self.add_fault(spec)
            return {"ok": True}

        return router
