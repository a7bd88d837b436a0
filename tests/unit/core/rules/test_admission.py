"""The sync rules as policy (core/rules/admission.py) over an in-memory slot store: 409 and
429 checked without a Prefect server, with an injected clock."""

from __future__ import annotations

import contextlib
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from mailsync.core import workspaces
from mailsync.core.rules.admission import (
    QUOTA_LEASE_MARGIN_SECONDS,
    Admission,
    full_sync_limit,
)
from mailsync.core.rules.slots import LimitSpec, Refusal
from mailsync.db import session_scope
from mailsync.db.tables import JobStatus, SyncJob
from mailsync.errors import RateLimitedError, SyncInProgressError
from mailsync.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class MemorySlots:
    """A slot store as Prefect's limits behave: all-or-nothing takes, leases that end."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.leases: dict[str, tuple[list[str], datetime]] = {}

    def active_slots(self, name: str) -> int:
        now = self.clock()
        return sum(1 for names, end in self.leases.values() if name in names and end > now)

    def take(
        self, specs: list[LimitSpec], lease_seconds: float, *, ensure_first: bool = True
    ) -> str | Refusal:
        if any(self.active_slots(s.name) >= s.limit for s in specs):
            return Refusal(None)
        lease = secrets.token_hex(4)
        end = self.clock() + timedelta(seconds=lease_seconds)
        self.leases[lease] = ([s.name for s in specs], end)
        return lease

    def release(self, lease_id: str) -> None:
        self.leases.pop(lease_id, None)


def _admission(clock: Clock) -> tuple[Admission, MemorySlots]:
    slots = MemorySlots(clock)
    settings = Settings(sync_quota=6, sync_quota_window_seconds=3600)
    return Admission(slots, settings, clock), slots


def _workspace(session: Session) -> str:
    workspace_id = f"ad-{secrets.token_hex(4)}"
    workspaces.create_workspace(session, workspace_id)
    return workspace_id


def _record(session: Session, workspace_id: str, lease: tuple[str, datetime] | None) -> None:
    job = SyncJob(workspace_id=workspace_id, mode="incremental", providers=["gmail"])
    if lease is not None:
        job.quota_lease_id, job.quota_expires_at = lease
    session.add(job)
    session.flush()


def _no_refresh(_session: Session, _job: SyncJob) -> SyncJob:
    return _job


def test_the_seventh_on_demand_sync_in_an_hour_is_refused_until_the_first_frees(
    database_url: str,
) -> None:
    """Six takes in a rolling hour; the seventh is 429 with Retry-After counting down to the
    first one's end; past it, a take succeeds again (and the stale lease is given back)."""
    clock = Clock()
    admission, slots = _admission(clock)
    with session_scope(database_url) as session:
        workspace_id = _workspace(session)
        for minute in range(6):
            clock.now += timedelta(minutes=minute and 1)
            _record(session, workspace_id, admission.take_quota(session, workspace_id))
        clock.now += timedelta(minutes=10)
        with pytest.raises(RateLimitedError) as refused:
            admission.take_quota(session, workspace_id)
        assert refused.value.retry_after == 3600 - 15 * 60
        assert admission.quota_state(session, workspace_id).remaining == 0
        clock.now += timedelta(seconds=refused.value.retry_after)
        _record(session, workspace_id, admission.take_quota(session, workspace_id))
        assert len(slots.leases) == 6


def test_a_second_full_sync_of_a_provider_is_409_naming_the_first(database_url: str) -> None:
    """While a full sync of gmail is queued, another full sync or an incremental one naming
    gmail is refused with the queued job's id; microsoft alone is not blocked."""
    clock = Clock()
    admission, _ = _admission(clock)
    with session_scope(database_url) as session:
        workspace_id = _workspace(session)
        lease = admission.take_full_sync(session, workspace_id, ["gmail"], _no_refresh)
        first = SyncJob(
            workspace_id=workspace_id,
            mode="full",
            providers=["gmail"],
            status=JobStatus.queued.value,
            lease_id=lease,
        )
        session.add(first)
        session.flush()
        with pytest.raises(SyncInProgressError) as busy:
            admission.take_full_sync(session, workspace_id, ["gmail", "microsoft"], _no_refresh)
        assert busy.value.job_id == first.id
        with pytest.raises(SyncInProgressError):
            admission.check_no_full_sync(session, workspace_id, ["gmail"], _no_refresh)
        admission.check_no_full_sync(session, workspace_id, ["microsoft"], _no_refresh)
        assert admission.take_full_sync(session, workspace_id, ["microsoft"], _no_refresh)


class RacingRelease(MemorySlots):
    """Each release waits (up to a second) for a second one: two requests releasing the same
    lease at once meet here, which is the race Prefect's non-atomic decrement turns into a
    slot freed twice."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.released: list[str] = []
        self.meet = threading.Barrier(2, timeout=1)

    def release(self, lease_id: str) -> None:
        self.released.append(lease_id)
        with contextlib.suppress(threading.BrokenBarrierError):
            self.meet.wait()
        super().release(lease_id)


def test_two_requests_past_a_window_release_an_expired_quota_lease_once(
    database_url: str,
) -> None:
    """Issue 15 point 6: two triggers arriving together after a quota lease's window ended
    both see it expired; only one gives it back. Released twice, Prefect's decrement (read
    the lease, decrement, revoke: not atomic) frees two slots for one, and the quota admits a
    7th request in the next window."""
    clock = Clock()
    slots = RacingRelease(clock)
    admission = Admission(slots, Settings(sync_quota=6, sync_quota_window_seconds=3600), clock)
    with session_scope(database_url) as session:
        workspace_id = _workspace(session)
        _record(session, workspace_id, admission.take_quota(session, workspace_id))
    clock.now += timedelta(hours=1, seconds=1)

    def free() -> None:
        with session_scope(database_url) as session:
            admission.free_expired(session, workspace_id)

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(free), pool.submit(free)]:
            future.result()
    assert len(slots.released) == 1, slots.released


def test_a_quota_lease_outlives_its_window_so_only_we_release_it(database_url: str) -> None:
    """The slot store never ends a quota lease by itself before we release it at the window's
    end (its expiry racing our release would free the slot twice too)."""
    clock = Clock()
    admission, slots = _admission(clock)
    taken: list[float] = []
    original = slots.take

    def take(specs: list[LimitSpec], lease_seconds: float, **kw: bool) -> str | Refusal:
        taken.append(lease_seconds)
        return original(specs, lease_seconds)

    slots.take = take  # type: ignore[method-assign]
    with session_scope(database_url) as session:
        admission.take_quota(session, _workspace(session))
    assert taken and taken[0] > 3600 and taken[0] == 3600 + QUOTA_LEASE_MARGIN_SECONDS


class EndingHolder(MemorySlots):
    """A slot held by a job that has already ended (a run closes its job, then releases its
    slot): the lease goes once the store has been asked `asks` times."""

    def __init__(self, clock: Clock, asks: int) -> None:
        super().__init__(clock)
        self.asks = asks

    def _asked(self) -> None:
        self.asks -= 1
        if self.asks == 0:
            self.leases.clear()

    def active_slots(self, name: str) -> int:
        self._asked()
        return super().active_slots(name)

    def take(
        self, specs: list[LimitSpec], lease_seconds: float, *, ensure_first: bool = True
    ) -> str | Refusal:
        self._asked()
        return super().take(specs, lease_seconds, ensure_first=ensure_first)


@pytest.mark.parametrize("request_kind", ["full", "incremental"])
def test_a_slot_given_back_just_after_its_job_ended_admits_the_next_sync(
    database_url: str, request_kind: str
) -> None:
    """The job holding the slot reads completed a moment before its run releases the slot:
    a request in that moment is admitted once the slot is back, not refused with a 409
    naming no job."""
    clock = Clock()
    slots = EndingHolder(clock, asks=3)
    admission = Admission(slots, Settings(sync_quota=6, sync_quota_window_seconds=3600), clock)
    with session_scope(database_url) as session:
        workspace_id = _workspace(session)
        ended = SyncJob(workspace_id=workspace_id, mode="full", providers=["gmail"],
                        status=JobStatus.completed.value)  # fmt: skip
        session.add(ended)
        session.flush()
        name = full_sync_limit(workspace_id, "gmail").name
        slots.leases["ending"] = ([name], clock.now + timedelta(minutes=1))
        if request_kind == "full":
            lease = admission.take_full_sync(session, workspace_id, ["gmail"], _no_refresh)
            assert list(slots.leases) == [lease]
        else:
            admission.check_no_full_sync(session, workspace_id, ["gmail"], _no_refresh)
            assert slots.leases == {}
