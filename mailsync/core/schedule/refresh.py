"""Scheduled syncs: which mailboxes a refresh round syncs, and the nightly full syncs.

A refresh round (flows/refresh.py, deployment `refresh-mailboxes/refresh`, every
`MAILSYNC_REFRESH_INTERVAL_SECONDS`) syncs incrementally every connected mailbox that is due,
inside its own flow run: one job per workspace (trigger `schedule`), readable through
`GET /v1/email/sync/{job_id}` like any other. It takes no on-demand quota slot. A mailbox is
skipped while Prefect shows a sync of its workspace and provider in progress: a flow run of
`sync-mailbox` tagged `workspace:<id>` (and `provider:<p>`, or no provider tag at all) in a
non-terminal state, or a taken `mailsync-full-sync:<workspace>:<provider>` slot. Two rounds
never overlap: the deployment's Prefect concurrency limit (1, CANCEL_NEW) cancels a round
that starts while the previous one still runs.

What Prefect shows as busy is read by mailsync/orchestration/rounds.py; all here works on
plain values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, and_, col, or_, select

from mailsync.core.jobs.contract import JobRef, MailboxOutcome, MailboxRef
from mailsync.core.push.state import PushStatus
from mailsync.core.sync.engine import MailboxResult
from mailsync.db.tables import (
    JobStatus,
    Mailbox,
    MailboxPush,
    MailboxStatus,
    SyncJob,
    SyncMode,
    as_utc,
    utcnow,
)

log = logging.getLogger(__name__)

FULL_SYNC_LIMIT_PREFIX = "mailsync-full-sync:"
SYNC_FLOW = "sync-mailbox"
ANY_PROVIDER = "*"


# -- which mailboxes are due -----------------------------------------------------------------
def due_cutoff(now: datetime, interval_seconds: int) -> datetime:
    """Mailboxes last synced at or before this are due.

    A tenth of the interval is forgiven: a round's own syncs end a few seconds after the
    round started, so an exact cutoff would skip those mailboxes in the next round and
    refresh them only every other interval.
    """
    return now - timedelta(seconds=interval_seconds - interval_seconds // 10)


def due_mailboxes(
    session: Session,
    now: datetime,
    interval_seconds: int,
    workspaces: Iterable[str] | None = None,
    *,
    push_interval_seconds: int | None = None,
) -> list[Mailbox]:
    """Active mailboxes never synced, or last synced at or before the cutoff (one waiting
    for re-authorization, or disconnected, is not asked again); with
    `push_interval_seconds`, a mailbox whose push works (core/push/state.py: active and not
    expired) only once that longer interval passed: the poll is the net under a notification
    that never came. Push expired, failing or off: polled at the interval, as without push."""
    cutoff = due_cutoff(now, interval_seconds)
    stale = col(Mailbox.last_synced_at) <= cutoff
    if push_interval_seconds is not None:
        working = and_(
            col(MailboxPush.status) == PushStatus.active.value,
            col(MailboxPush.expires_at) > now,
        )
        # Spelled out rather than NOT(working): a missing row (the outer join's NULLs) is
        # not working either.
        not_working = or_(
            col(MailboxPush.status).is_(None),
            col(MailboxPush.status) != PushStatus.active.value,
            col(MailboxPush.expires_at).is_(None),
            col(MailboxPush.expires_at) <= now,
        )
        rarely = col(Mailbox.last_synced_at) <= due_cutoff(now, push_interval_seconds)
        stale = or_(and_(working, rarely), and_(not_working, stale))
    query = (
        select(Mailbox)
        .outerjoin(MailboxPush, col(MailboxPush.mailbox_id) == col(Mailbox.id))
        .where(col(Mailbox.status) == MailboxStatus.active.value)
        .where(or_(col(Mailbox.last_synced_at).is_(None), stale))
    )
    if workspaces is not None:
        query = query.where(col(Mailbox.workspace_id).in_(list(workspaces)))
    query = query.order_by(col(Mailbox.workspace_id), col(Mailbox.provider), col(Mailbox.address))
    return list(session.exec(query))


# -- what is busy, from Prefect -------------------------------------------------------------
@dataclass(frozen=True)
class ActiveRun:
    """A flow run Prefect shows as scheduled, pending, running, paused or cancelling."""

    name: str
    tags: list[str]
    scheduled_for: datetime | None = None  # only for runs still waiting to start


Busy = dict[tuple[str, str], str]  # (workspace, provider or "*") -> why


def busy_from_runs(runs: Iterable[ActiveRun], now: datetime, horizon: timedelta) -> Busy:
    """Workspace+provider pairs with a sync queued or running, from the runs' tags.

    A run tagged with a workspace but no provider (a UI run that has not started yet is not
    tagged at all; one that has started carries every tag) blocks all of its providers. A run
    scheduled beyond the horizon (e.g. tomorrow) does not block today's refreshes.
    """
    busy: Busy = {}
    for run in runs:
        if run.scheduled_for is not None and as_utc(run.scheduled_for) > now + horizon:  # type: ignore[operator]
            continue
        workspaces = [t.split(":", 1)[1] for t in run.tags if t.startswith("workspace:")]
        providers = [t.split(":", 1)[1] for t in run.tags if t.startswith("provider:")]
        for workspace in workspaces:
            for provider in providers or [ANY_PROVIDER]:
                busy.setdefault((workspace, provider), f"sync {run.name} is queued or running")
    return busy


def busy_from_limits(limits: Iterable[tuple[str, int]]) -> Busy:
    """Workspace+provider pairs whose full-sync slot is taken: (limit name, active slots)."""
    busy: Busy = {}
    for name, active in limits:
        if active > 0 and name.startswith(FULL_SYNC_LIMIT_PREFIX):
            workspace, _, provider = name.removeprefix(FULL_SYNC_LIMIT_PREFIX).rpartition(":")
            if workspace and provider:
                busy[(workspace, provider)] = "a full sync is in progress"
    return busy


# -- the round's plan and its jobs -------------------------------------------------------------
@dataclass(frozen=True)
class DueMailbox:
    mailbox_id: str
    workspace_id: str
    provider: str
    address: str
    has_cursor: bool = False  # synced before: an incremental, quick when nothing changed

    def ref(self) -> MailboxRef:
        return MailboxRef(self.mailbox_id, self.provider, self.address, self.has_cursor)


@dataclass(frozen=True)
class Skipped:
    mailbox: DueMailbox
    reason: str


@dataclass
class RefreshPlan:
    groups: dict[str, list[DueMailbox]] = field(default_factory=dict)  # workspace -> mailboxes
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def mailbox_count(self) -> int:
        return sum(len(g) for g in self.groups.values())


def plan_refresh(mailboxes: Iterable[Mailbox], busy: Busy) -> RefreshPlan:
    """Group the due mailboxes by workspace, leaving out those with a sync in progress."""
    plan = RefreshPlan()
    for m in mailboxes:
        ref = DueMailbox(m.id, m.workspace_id, m.provider, m.address, m.cursor is not None)
        reason = busy.get((m.workspace_id, m.provider)) or busy.get((m.workspace_id, ANY_PROVIDER))
        if reason:
            plan.skipped.append(Skipped(ref, reason))
        else:
            plan.groups.setdefault(m.workspace_id, []).append(ref)
    return plan


def open_refresh_jobs(session: Session, plan: RefreshPlan, flow_run_id: str | None) -> list[JobRef]:
    """One running job per workspace (trigger `schedule`), bound to the round's flow run, so
    its state reads as failed should the round crash. No quota slot is taken."""
    now = utcnow()
    jobs: list[JobRef] = []
    for workspace_id, refs in plan.groups.items():
        job = SyncJob(
            workspace_id=workspace_id,
            mode=SyncMode.incremental.value,
            providers=sorted({r.provider for r in refs}),
            trigger="schedule",
            status=JobStatus.running.value,
            queued_at=now,
            started_at=now,
            flow_run_id=flow_run_id,
        )
        session.add(job)
        jobs.append(
            JobRef(
                job.id,
                workspace_id,
                tuple(job.providers),
                job.mode,
                tuple(r.ref() for r in refs),
            )
        )
    session.flush()
    return jobs


# -- a round's units of work -----------------------------------------------------------------
MAX_BATCH = 10


def batches(
    jobs: list[JobRef], concurrency: int, max_batch: int = MAX_BATCH
) -> list[tuple[str, list[MailboxRef]]]:
    """Each job's mailboxes as (job id, mailboxes) units, one Prefect task run each.

    A task run costs Prefect's server more than a quiet incremental sync costs us (its state
    events are recorded one by one; BENCHMARKS.md, fan-out), so mailboxes synced before go in
    batches: as many as keep `concurrency` threads busy, at most `max_batch` mailboxes each.
    A mailbox never synced is a unit of its own: its first sync builds the whole index.
    """
    quick = sum(1 for job in jobs for m in job.mailboxes if m.has_cursor)
    size = max(1, min(max_batch, -(-quick // max(1, concurrency))))
    units: list[tuple[str, list[MailboxRef]]] = []
    for job in jobs:
        synced = [m for m in job.mailboxes if m.has_cursor]
        units += [(job.job_id, synced[i : i + size]) for i in range(0, len(synced), size)]
        units += [(job.job_id, [m]) for m in job.mailboxes if not m.has_cursor]
    return units


@dataclass(frozen=True)
class Retry:
    """When a mailbox of a batch is synced again after a transient failure: after each of
    `delays` in turn, then no more (rq's Retry, as the per-mailbox tasks had on Prefect's
    decorator)."""

    delays: tuple[float, ...] = (2.0, 10.0)


SyncOne = Callable[[MailboxRef], MailboxResult]


def sync_batch(
    mailboxes: list[MailboxRef],
    sync: SyncOne,
    transient: Callable[[BaseException], bool],
    retry: Retry = Retry(),
    sleep: Callable[[float], None] = time.sleep,
    logger: logging.Logger | logging.LoggerAdapter[Any] = log,
) -> list[MailboxOutcome]:
    """Each mailbox's result, or the exception that ended its last attempt, in order: one
    mailbox's failure never stops the others, and only transient ones are tried again."""
    outcomes: list[MailboxOutcome] = []
    for mailbox in mailboxes:
        for delay in (*retry.delays, None):
            try:
                outcomes.append(sync(mailbox))
                break
            except Exception as exc:
                if delay is None or not transient(exc):
                    outcomes.append(exc)
                    break
                logger.info(
                    "%s %s: %s; again in %g s",
                    mailbox.provider,
                    mailbox.address,
                    type(exc).__name__,
                    delay,
                )
                sleep(delay)
    return outcomes
