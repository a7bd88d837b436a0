"""The sync rules, as policy over a slot store (Prefect global concurrency limits in service).

- 409 `sync_in_progress`: at most one full sync queued or running per workspace and provider.
  A full sync holds a lease on `mailsync-full-sync:<workspace>:<provider>` (limit 1) from the
  request until its flow run ends; the flow renews it while it runs, so a dead run frees it
  within one lease time. Any request naming a provider whose full sync is queued or running
  is refused, with that job's id.
- 429 `rate_limited`: at most `sync_quota` accepted on-demand syncs per workspace in any
  rolling window. Each accepted request takes a lease on `mailsync-on-demand:<workspace>`
  lasting exactly the window and never renewed: an exact rolling window, unlike Prefect's
  token-bucket rate limits. The lease's end is stored with the job, which gives the
  X-RateLimit-* figures, and a lease found past its end is released at once rather than
  waiting for Prefect's reclaim loop (~15 s), so the window is exact to the second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select, update

from mailsync.core.rules.slots import LimitSpec, Refusal, SlotStore
from mailsync.db.tables import JobStatus, SyncJob, SyncMode, as_utc, utcnow
from mailsync.errors import RateLimitedError, SyncInProgressError
from mailsync.settings import Settings

Clock = Callable[[], datetime]
Refresh = Callable[[Session, SyncJob], SyncJob]

# How long a refused full-sync request looks for the job row of the winner that holds the
# slot: the winner writes it right after taking its leases, but under a burst of requests
# Prefect answers each take in seconds (seen: 2-3 s with 50 at once on a 2-core machine).
_HOLDER_WAIT_S = 10.0


# A quota lease is taken for its window and this much more: we release it at the window's
# end (free_expired), and Prefect's own expiry must never race that release (two releases of
# one lease free two slots: Prefect reads the lease, decrements, then revokes).
QUOTA_LEASE_MARGIN_SECONDS = 300


@dataclass(frozen=True)
class QuotaState:
    limit: int
    remaining: int
    reset: datetime  # when the next used slot frees (now, when none is used)

    @property
    def reset_epoch(self) -> int:
        return math.ceil(self.reset.timestamp())


def _in_progress(job_id: str | None, providers: list[str]) -> SyncInProgressError:
    which = " and ".join(providers)
    return SyncInProgressError(
        f"a full sync of this workspace's {which} mailbox is already queued or running"
        + (f" (job {job_id}); wait for it to finish" if job_id else "; retry shortly"),
        job_id=job_id,
    )


# The limits created per workspace, provider and mailbox (core/retention.py prunes idle ones).
FULL_SYNC_LIMIT_PREFIX = "mailsync-full-sync:"
MAILBOX_LIMIT_PREFIX = "mailsync-mailbox:"
QUOTA_LIMIT_PREFIX = "mailsync-on-demand:"


def full_sync_limit(workspace_id: str, provider: str) -> LimitSpec:
    return LimitSpec(f"{FULL_SYNC_LIMIT_PREFIX}{workspace_id}:{provider}", 1)


def mailbox_limit(mailbox_id: str) -> LimitSpec:
    """One sync of a mailbox at a time, whatever started it (runtime.mailbox_turn)."""
    return LimitSpec(f"{MAILBOX_LIMIT_PREFIX}{mailbox_id}", 1)


class Admission:
    def __init__(self, limits: SlotStore, settings: Settings, clock: Clock = utcnow) -> None:
        self.limits, self.settings, self.clock = limits, settings, clock

    # -- 429 ------------------------------------------------------------------------------
    def quota_limit(self, workspace_id: str) -> LimitSpec:
        return LimitSpec(f"{QUOTA_LIMIT_PREFIX}{workspace_id}", self.settings.sync_quota)

    def _quota_jobs(self, session: Session, workspace_id: str) -> list[SyncJob]:
        return list(
            session.exec(
                select(SyncJob)
                .where(SyncJob.workspace_id == workspace_id)
                .where(col(SyncJob.quota_lease_id).is_not(None))
                .order_by(col(SyncJob.quota_expires_at))
            )
        )

    def quota_state(self, session: Session, workspace_id: str) -> QuotaState:
        now = self.clock()
        ends = [
            end
            for job in self._quota_jobs(session, workspace_id)
            if (end := as_utc(job.quota_expires_at)) is not None and end > now
        ]
        limit = self.settings.sync_quota
        remaining = max(0, limit - len(ends))
        return QuotaState(limit, remaining, min(ends) if ends else now)

    def free_expired(self, session: Session, workspace_id: str) -> None:
        """Give back the quota leases whose window ended. Each is claimed first (a
        compare-and-set on the job row): of two requests finding the same lease expired,
        only the one that clears it releases it."""
        now = self.clock()
        for job in self._quota_jobs(session, workspace_id):
            end, lease = as_utc(job.quota_expires_at), job.quota_lease_id
            if end is None or end > now or not lease:
                continue
            claimed = session.exec(  # type: ignore[call-overload]
                update(SyncJob)
                .where(col(SyncJob.id) == job.id, col(SyncJob.quota_lease_id) == lease)
                .values(quota_lease_id=None)
                .execution_options(synchronize_session=False)
            )
            session.expire(job, ["quota_lease_id"])
            if claimed.rowcount == 1:
                self.limits.release(lease)

    def take_quota(self, session: Session, workspace_id: str) -> tuple[str, datetime]:
        """One on-demand slot: (lease id, when it frees). Raises RateLimitedError."""
        self.free_expired(session, workspace_id)
        window = self.settings.sync_quota_window_seconds
        taken = self.limits.take(
            [self.quota_limit(workspace_id)], window + QUOTA_LEASE_MARGIN_SECONDS
        )
        if isinstance(taken, Refusal):
            state = self.quota_state(session, workspace_id)
            wait = (state.reset - self.clock()).total_seconds()
            retry_after = max(1, math.ceil(wait))
            raise RateLimitedError(
                f"on-demand sync is capped at {state.limit} per {window // 60} minutes per "
                f"workspace; retry in {retry_after} s",
                retry_after=retry_after,
            )
        return taken, self.clock() + timedelta(seconds=window)

    # -- 409 ------------------------------------------------------------------------------
    def _blockers(
        self, session: Session, workspace_id: str, providers: list[str], refresh: Refresh
    ) -> list[SyncJob]:
        jobs = session.exec(
            select(SyncJob)
            .where(SyncJob.workspace_id == workspace_id, SyncJob.mode == SyncMode.full.value)
            .where(col(SyncJob.status).in_([JobStatus.queued.value, JobStatus.running.value]))
            .order_by(col(SyncJob.queued_at))
        ).all()
        blocking = []
        for job in jobs:
            if set(job.providers) & set(providers):
                refresh(session, job)  # a crash Prefect already saw frees the slot now
                if not JobStatus(job.status).terminal:
                    blocking.append(job)
        return blocking

    def check_no_full_sync(
        self, session: Session, workspace_id: str, providers: list[str], refresh: Refresh
    ) -> None:
        """For requests that do not take the slot themselves (incremental syncs)."""

        def free() -> bool:
            return not any(
                self.limits.active_slots(full_sync_limit(workspace_id, p).name) > 0
                for p in providers
            )

        self._wait_for_holder(session, workspace_id, providers, refresh, free)

    def take_full_sync(
        self, session: Session, workspace_id: str, providers: list[str], refresh: Refresh
    ) -> str:
        """The full-sync slot of every provider at once; returns the lease id."""
        specs = [full_sync_limit(workspace_id, p) for p in providers]
        taken: str | Refusal = Refusal(None)

        def free() -> bool:
            nonlocal taken
            taken = self.limits.take(specs, self.settings.full_sync_lease_seconds)
            return not isinstance(taken, Refusal)

        self._wait_for_holder(session, workspace_id, providers, refresh, free)
        assert isinstance(taken, str)
        return taken

    def _wait_for_holder(
        self,
        session: Session,
        workspace_id: str,
        providers: list[str],
        refresh: Refresh,
        free: Callable[[], bool],
    ) -> None:
        """Returns once `free()` holds with no open full sync of `providers`; raises 409 when
        there is one. A slot taken with no open job is either a winner whose job row is not
        committed yet, or a job that has ended and is giving its slot back (a run closes its
        job, then releases): either resolves within moments, so the request looks again
        rather than answer 409 naming nothing, or a 409 just after the job's end."""
        deadline = time.monotonic() + _HOLDER_WAIT_S
        while True:
            blockers = self._blockers(session, workspace_id, providers, refresh)
            if blockers:
                raise _in_progress(blockers[0].id, providers)
            if free():
                return
            if time.monotonic() > deadline:
                raise _in_progress(None, providers)
            session.commit()  # end the snapshot: see rows the winner committed since
            time.sleep(0.05)
