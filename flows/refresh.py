"""A scheduled refresh round: incremental syncs of the due mailboxes, inside this flow run.

Which mailboxes and why: core/schedule/refresh.py. This flow only orchestrates: reconcile the open
jobs with their flow runs (core/jobs/reconcile.py), ask Prefect what is busy, plan, record one job
per workspace, sync the mailboxes in batches (one task run each, every mailbox retried on its
own), close the jobs, summarize. It never spawns flow runs, so a round over a thousand quiet
mailboxes costs one process and about a hundred task runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Self

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run as current_run
from prefect.task_runners import ThreadPoolTaskRunner

from mailsync.core.jobs.contract import JobEnd, JobRef, MailboxOutcome, MailboxRef
from mailsync.core.jobs.outcomes import job_end
from mailsync.core.schedule import refresh
from mailsync.core.schedule.summaries import artifact_key
from mailsync.db import session_scope
from mailsync.db.tables import utcnow
from mailsync.orchestration import runs, runtime
from mailsync.orchestration.rounds import read_busy
from mailsync.settings import get_settings
from mailsync.webhooks import dispatch
from tasks.refresh import maintain_push, reconcile_jobs, refresh_batch


@dataclass(frozen=True)
class _Unit:
    job_id: str
    key: str  # its turns' key in the round's RoundTurns
    mailboxes: list[MailboxRef]


@dataclass(frozen=True)
class _Closed:
    """A job of the round, once ended: for the round's log, summary and result."""

    job: JobRef
    end: JobEnd

    def row(self) -> dict[str, Any]:
        return {
            "job_id": self.job.job_id,
            "workspace_id": self.job.workspace_id,
            "mailboxes": len(self.job.mailboxes),
            "status": "failed" if self.end.error else "completed",
            "error": self.end.error.code if self.end.error else None,
        }


Batch = PrefectFuture[list[MailboxOutcome]]


def _outcomes(future: Batch, unit: _Unit) -> list[MailboxOutcome]:
    try:
        return future.result()
    except Exception as exc:  # the batch itself failed (a bug): every mailbox of it did
        return [exc] * len(unit.mailboxes)


class _RefreshTaskRunner(ThreadPoolTaskRunner[Any]):
    """Incremental syncs wait on the network: more threads than cores, as many as
    MAILSYNC_REFRESH_CONCURRENCY says when the run starts. Prefect duplicates a flow's runner
    for every run; sized at import instead, a run forked by the warm worker would get its
    parent's figure, not its job's."""

    def duplicate(self) -> Self:
        return type(self)(max_workers=get_settings().refresh_concurrency)


_RUNNER = _RefreshTaskRunner()


@flow(
    name="refresh-mailboxes",
    log_prints=True,
    task_runner=_RUNNER,  # type: ignore[arg-type]
    # A round that dies gives back the turns it held for its batches.
    on_crashed=[runtime.release_leases_hook],
    on_cancellation=[runtime.release_leases_hook],
)
def refresh_mailboxes(workspaces: list[str] | None = None) -> dict[str, Any]:
    """Sync incrementally every connected mailbox that is due (optionally only in
    `workspaces`), skipping those with a sync of their workspace and provider in progress."""
    logger = get_run_logger()
    settings = get_settings()
    started = time.monotonic()
    # First, so that a stuck job's full-sync slot is free before the round looks at slots.
    reconciled = reconcile_jobs(return_state=True)
    if reconciled.is_failed():
        logger.error("open jobs not reconciled: %s", reconciled.message)
    if settings.push_base_url:
        # Before the plan: a mailbox whose push just failed is polled in this very round.
        maintained = maintain_push(return_state=True)
        if maintained.is_failed():
            logger.error("push channels not maintained: %s", maintained.message)
    now = utcnow()
    interval = settings.refresh_interval_seconds
    with get_client(sync_client=True) as client:
        busy = read_busy(client, now, timedelta(seconds=interval))
    with session_scope(settings.resolved_database_url) as session:
        push_interval = settings.push_poll_interval_seconds if settings.push_base_url else None
        due = refresh.due_mailboxes(
            session, now, interval, workspaces, push_interval_seconds=push_interval
        )
        plan = refresh.plan_refresh(due, busy)
        jobs = refresh.open_refresh_jobs(session, plan, current_run.get_id())
    for skip in plan.skipped:
        m = skip.mailbox
        logger.info("skipped %s %s of %s: %s", m.provider, m.address, m.workspace_id, skip.reason)
    logger.info(
        "%d mailboxes due; refreshing %d in %d jobs, %d skipped",
        len(due),
        plan.mailbox_count,
        len(jobs),
        len(plan.skipped),
    )

    units = refresh.batches(jobs, settings.refresh_concurrency)
    with runtime.round_turns(settings) as turns:
        futures: dict[Batch, _Unit] = {}
        for n, (job_id, mailboxes) in enumerate(units):
            unit = _Unit(job_id, f"{job_id}/{n}", mailboxes)
            quick = [m.mailbox_id for m in mailboxes if m.has_cursor]
            held = bool(quick) and turns.hold(unit.key, quick)
            label = f"{mailboxes[0].provider}:{mailboxes[0].address}" + (
                f" +{len(mailboxes) - 1}" if len(mailboxes) > 1 else ""
            )
            key = unit.key if held else None
            futures[refresh_batch.submit(job_id, label, mailboxes, turn_key=key)] = unit
        summary = _close_as_they_end(jobs, futures, logger, turns.release)
    _deliver_webhooks([s.job.job_id for s in summary])
    duration = time.monotonic() - started
    create_markdown_artifact(
        _markdown(summary, plan, duration),
        key=artifact_key("refresh-summary", current_run.get_name() or "round"),
        description="Summary of a scheduled refresh round",
    )
    return {
        "jobs": [s.row() for s in summary],
        "skipped": [{"mailbox_id": s.mailbox.mailbox_id, "reason": s.reason} for s in plan.skipped],
        "duration_s": round(duration, 3),
    }


def _close_as_they_end(
    jobs: list[JobRef],
    futures: dict[Batch, _Unit],
    logger: Any,
    on_done: Callable[[str], None],
) -> list[_Closed]:
    """Close each job once its mailboxes are done, a batch of jobs per transaction (at
    least every second), so a quick job does not wait for the round's slowest mailbox;
    `on_done(unit key)` as soon as a unit is done (its turns are given back)."""
    by_id = {job.job_id: job for job in jobs}
    left = {job_id: 0 for job_id in by_id}
    for unit in futures.values():
        left[unit.job_id] += 1
    outcomes: dict[str, dict[str, MailboxOutcome]] = {j: {} for j in by_id}
    summary: list[_Closed] = []
    ready: list[JobEnd] = []
    flushed = time.monotonic()

    def flush() -> None:
        nonlocal flushed
        if ready:
            runtime.close_jobs(ready)
            ready.clear()
        flushed = time.monotonic()

    for future in as_completed(list(futures)):
        unit = futures[future]
        on_done(unit.key)
        for mailbox, outcome in zip(unit.mailboxes, _outcomes(future, unit), strict=True):
            outcomes[unit.job_id][mailbox.mailbox_id] = outcome
        left[unit.job_id] -= 1
        if left[unit.job_id] == 0:
            job = by_id[unit.job_id]
            end = job_end(job, [outcomes[job.job_id][m.mailbox_id] for m in job.mailboxes])
            ready.append(end)
            if end.error:
                logger.warning(
                    "job %s of %s failed: %s: %s",
                    job.job_id,
                    job.workspace_id,
                    end.error.code,
                    end.error.message,
                )
            summary.append(_Closed(job, end))
        if len(ready) >= 100 or time.monotonic() - flushed > 1:
            flush()
    flush()
    return summary


def _deliver_webhooks(job_ids: list[str]) -> None:
    """One webhook delivery run for the round's events, if any has somewhere to go."""
    if any(dispatch.job_has_deliveries(job_id) for job_id in job_ids):
        with get_client(sync_client=True) as client:
            runs.start_delivery_run(f"after-refresh:{current_run.get_id()}", client=client)


def _markdown(summary: list[_Closed], plan: refresh.RefreshPlan, duration: float) -> str:
    added = sum(r.counts.added for s in summary for r in s.end.results)
    failed = [s for s in summary if s.end.error]
    lines = [
        "# Refresh round",
        "",
        f"{plan.mailbox_count} mailboxes refreshed in {len(summary)} jobs, "
        f"{len(plan.skipped)} skipped, {len(failed)} jobs failed, {added} messages added, "
        f"{duration:.1f} s",
        "",
        "| job | workspace | mailboxes | status | cursor resets |",
        "|---|---|---|---|---|",
    ]
    for s in summary:
        row = s.row()
        resets = sum(1 for r in s.end.results if r.reason == "cursor_reset")
        status = f"failed: `{row['error']}`" if row["error"] else row["status"]
        lines.append(
            f"| {row['job_id']} | {row['workspace_id']} | {row['mailboxes']} | {status} "
            f"| {resets} |"
        )
    if plan.skipped:
        lines += ["", "| skipped mailbox | workspace | why |", "|---|---|---|"]
        for skip in plan.skipped:
            m = skip.mailbox
            lines.append(f"| {m.provider} {m.address} | {m.workspace_id} | {skip.reason} |")
    return "\n".join(lines) + "\n"
