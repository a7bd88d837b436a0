"""Per-mailbox trouble for the fakes: faults injected by share, and a per-mailbox quota meter.

Both are provider-neutral (keys are mailbox addresses, compared case-insensitively) so every fake
can use them; the fake decides what an injected fault or a quota refusal looks like on its wire.

    faults = MailboxFaults()
    faults.set("a@example.com", FaultPlan(share=0.2, statuses=[429, 500, 503], seed=1))
    draw = faults.draw("a@example.com")       # once per API call of that mailbox
    draw.fault                                  # None, or InjectedFault(status, retry_after)
    draw.pause.wait()                           # slow_ms, then a hold until the plan is cleared

    quota = QuotaMeter(units_per_window=None, window_s=60.0)   # None: count, never refuse
    quota.set_limit("a@example.com", 15_000)
    wait = quota.charge("a@example.com", 5)    # None = admitted; else seconds until it fits

    app.include_router(mailbox_admin_router(faults, quota, exists=lambda a: a in boxes))

Admin surface (mailbox_admin_router):
    POST   /_admin/mailboxes/{address}/faults   FaultPlan JSON -> {"ok": true}
    GET    /_admin/mailboxes/{address}/faults   -> {"plan": FaultPlan | null, "calls", "injected"}
    DELETE /_admin/mailboxes/{address}/faults   -> {"cleared": bool}
    PUT    /_admin/mailboxes/{address}/quota    {"units_per_minute": int | null, "status"?: int}
    GET    /_admin/mailboxes/{address}/quota    -> QuotaMeter.usage(address)
A "minute" of the quota lasts `window_s` seconds (60 unless a test shrinks it).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field


class FaultPlan(BaseModel):
    """Fail `share` of a mailbox's API calls with a status drawn from `statuses`, seeded.

    `retry_after` (seconds) goes out as a Retry-After header when not None; `slow_ms` delays
    every call of the mailbox (failed or not); `hold` makes every call wait until the plan is
    cleared or replaced (at most HOLD_MAX_S), so a test keeps a sync running exactly as long
    as it needs, whatever the machine's speed."""

    share: float = Field(default=0.0, ge=0.0, le=1.0)
    statuses: list[int] = Field(default_factory=lambda: [429, 500, 503], min_length=1)
    retry_after: int | None = Field(default=1, ge=0)
    slow_ms: int = Field(default=0, ge=0)
    hold: bool = False
    seed: int = 0


# A held call is answered after this at the latest: under the provider clients' 30 s timeout,
# so a held sync crawls (one call per 20 s) instead of failing, and a forgotten hold ends.
HOLD_MAX_S = 20.0


@dataclass
class InjectedFault:
    """A fault to answer one call with; matches the `Fault` shape FakeControl hands out."""

    status: int
    retry_after: int | None


@dataclass(frozen=True)
class Pause:
    """How long a call of a troubled mailbox waits before it is answered."""

    seconds: float = 0.0
    hold: threading.Event | None = None  # set when the plan is cleared or replaced

    def __bool__(self) -> bool:
        return bool(self.seconds) or self.hold is not None

    def longest(self, other: Pause) -> Pause:
        """One wait standing for two (a batch's parts answer together)."""
        return Pause(max(self.seconds, other.seconds), self.hold or other.hold)

    def wait(self) -> None:
        if self.seconds:
            time.sleep(self.seconds)
        if self.hold is not None:
            self.hold.wait(HOLD_MAX_S)


@dataclass(frozen=True)
class Draw:
    fault: InjectedFault | None = None
    pause: Pause = Pause()


@dataclass
class _Armed:
    plan: FaultPlan
    rng: random.Random
    calls: int = 0
    injected: int = 0
    released: threading.Event = field(default_factory=threading.Event)


class MailboxFaults:
    """Thread-safe fault plans per mailbox; the same seed gives the same sequence of faults."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plans: dict[str, _Armed] = {}

    def set(self, address: str, plan: FaultPlan) -> None:
        with self._lock:
            old = self._plans.get(address.lower())
            self._plans[address.lower()] = _Armed(plan, random.Random(plan.seed))
        if old is not None:
            old.released.set()

    def clear(self, address: str) -> bool:
        with self._lock:
            old = self._plans.pop(address.lower(), None)
        if old is not None:
            old.released.set()
        return old is not None

    def clear_all(self) -> None:
        with self._lock:
            plans = list(self._plans.values())
            self._plans.clear()
        for armed in plans:
            armed.released.set()

    def plan(self, address: str) -> FaultPlan | None:
        with self._lock:
            armed = self._plans.get(address.lower())
            return armed.plan if armed else None

    def draw(self, address: str) -> Draw:
        """Decide one call's fate (counts it); no plan means no fault and no delay."""
        with self._lock:
            armed = self._plans.get(address.lower())
            if armed is None:
                return Draw()
            armed.calls += 1
            plan = armed.plan
            # Two draws per call whatever the outcome, so the sequence depends on the seed only.
            roll, pick = armed.rng.random(), armed.rng.randrange(len(plan.statuses))
            fault = None
            if roll < plan.share:
                armed.injected += 1
                fault = InjectedFault(plan.statuses[pick], plan.retry_after)
            return Draw(fault, Pause(plan.slow_ms / 1000, armed.released if plan.hold else None))

    def stats(self, address: str) -> dict[str, Any]:
        with self._lock:
            armed = self._plans.get(address.lower())
            if armed is None:
                return {"plan": None, "calls": 0, "injected": 0}
            return {
                "plan": armed.plan.model_dump(),
                "calls": armed.calls,
                "injected": armed.injected,
            }


@dataclass
class _Window:
    limit: int | None
    status: int
    charges: deque[tuple[float, int]] = field(default_factory=deque)
    in_window: int = 0
    charged_total: int = 0
    rejected: int = 0
    first_charge: float | None = None
    last_charge: float | None = None


class QuotaMeter:
    """Units per mailbox in a sliding window of `window_s` seconds, like Gmail's per-user quota.

    Every admitted charge is counted (also without a limit, so tests can measure a client's
    rate); a charge that would take the window over the limit is refused and not counted."""

    def __init__(
        self,
        units_per_window: int | None = None,
        window_s: float = 60.0,
        status: int = 429,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.default_limit = units_per_window
        self.default_status = status
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def _window(self, key: str) -> _Window:
        window = self._windows.get(key.lower())
        if window is None:
            window = _Window(self.default_limit, self.default_status)
            self._windows[key.lower()] = window
        return window

    def _prune(self, window: _Window, now: float) -> None:
        horizon = now - self.window_s
        while window.charges and window.charges[0][0] <= horizon:
            window.in_window -= window.charges.popleft()[1]

    def set_limit(self, key: str, units: int | None, status: int | None = None) -> None:
        with self._lock:
            window = self._window(key)
            window.limit = units
            if status is not None:
                window.status = status

    def status(self, key: str) -> int:
        """The HTTP status this key's refusals use (429 or 403)."""
        with self._lock:
            return self._window(key).status

    def charge(self, key: str, units: int) -> float | None:
        """Charge `units`; None when admitted, else the seconds until they would fit."""
        with self._lock:
            now = self._clock()
            window = self._window(key)
            self._prune(window, now)
            if window.limit is not None and window.in_window + units > window.limit:
                window.rejected += 1
                return self._wait(window, units, now)
            window.charges.append((now, units))
            window.in_window += units
            window.charged_total += units
            if window.first_charge is None:
                window.first_charge = now
            window.last_charge = now
            return None

    def _wait(self, window: _Window, units: int, now: float) -> float:
        assert window.limit is not None
        if units > window.limit:
            return self.window_s  # never fits; come back in a window and be refused again
        excess = window.in_window + units - window.limit
        for when, amount in window.charges:
            excess -= amount
            if excess <= 0:
                return max(0.0, when + self.window_s - now)
        return self.window_s  # pragma: no cover - the loop always frees enough

    def usage(self, key: str) -> dict[str, Any]:
        with self._lock:
            window = self._window(key)
            self._prune(window, self._clock())
            return {
                "units_per_minute": window.limit,
                "window_seconds": self.window_s,
                "status": window.status,
                "in_window": window.in_window,
                "charged_total": window.charged_total,
                "rejected": window.rejected,
                "first_charge": window.first_charge,
                "last_charge": window.last_charge,
            }

    def reset_usage(self, key: str) -> None:
        """Forget what was charged (the limit stays)."""
        with self._lock:
            window = self._window(key)
            self._windows[key.lower()] = _Window(window.limit, window.status)


def retry_after_header(seconds: float) -> str:
    """Retry-After carries whole seconds; round up so a client that obeys it fits."""
    return str(max(1, math.ceil(seconds)))


class QuotaIn(BaseModel):
    units_per_minute: int | None = Field(default=None, ge=1)
    status: int | None = Field(default=None)


def mailbox_admin_router(
    faults: MailboxFaults,
    quota: QuotaMeter | None = None,
    exists: Callable[[str], bool] | None = None,
) -> APIRouter:
    """`/_admin/mailboxes/{address}/faults` (and `/quota` when a meter is given)."""
    router = APIRouter(prefix="/_admin/mailboxes", tags=["admin"])

    def known(address: str) -> None:
        if exists is not None and not exists(address):
            raise HTTPException(404, f"no mailbox {address}")

    @router.post("/{address}/faults")
    def set_faults(address: str, plan: FaultPlan) -> dict[str, bool]:
        known(address)
        faults.set(address, plan)
        return {"ok": True}

    @router.get("/{address}/faults")
    def get_faults(address: str) -> dict[str, Any]:
        known(address)
        return faults.stats(address)

    @router.delete("/{address}/faults")
    def clear_faults(address: str) -> dict[str, bool]:
        known(address)
        return {"cleared": faults.clear(address)}

    if quota is not None:
        meter = quota

        @router.put("/{address}/quota")
        def set_quota(address: str, spec: QuotaIn) -> dict[str, Any]:
            known(address)
            if spec.status not in (None, 403, 429):
                raise HTTPException(422, "status must be 403 or 429")
            meter.set_limit(address, spec.units_per_minute, spec.status)
            return meter.usage(address)

        @router.get("/{address}/quota")
        def get_quota(address: str) -> dict[str, Any]:
            known(address)
            return meter.usage(address)

    return router
