"""A scheduled refresh round: incremental syncs of the due mailboxes, inside this flow run.

Which mailboxes and why: mailsync/refresh.py. This flow only orchestrates: ask Prefect what is
busy, plan, record one job per workspace, sync each mailbox as a retryable task, close the
jobs, summarize. It never spawns flow runs, so a round over a thousand quiet mailboxes costs
one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Self

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run as current_run
from prefect.task_runners import ThreadPoolTaskRunner

from mailsync import refresh, runtime
from mailsync.db import session_scope
from mailsync.models import utcnow
from mailsync.settings import get_settings
from mailsync.webhooks import dispatch
from tasks.refresh import refresh_mailbox


def _outcome(future: PrefectFuture[dict[str, Any]]) -> dict[str, Any] | BaseException:
    try:
        return future.result()
    except Exception as exc:
        return exc


class _RefreshTaskRunner(ThreadPoolTaskRunner[Any]):
    """Incremental syncs wait on the network: more threads than cores, as many as
    MAILSYNC_REFRESH_CONCURRENCY says when the run starts. Prefect duplicates a flow's runner
    for every run; sized at import instead, a run forked by the warm worker would get its
    parent's figure, not its job's."""

    def duplicate(self) -> Self:
        return type(self)(max_workers=get_settings().refresh_concurrency)


_RUNNER = _RefreshTaskRunner()


@flow(name="refresh-mailboxes", log_prints=True, task_runner=_RUNNER)  # type: ignore[arg-type]
def refresh_mailboxes(workspaces: list[str] | None = None) -> dict[str, Any]:
    """Sync incrementally every connected mailbox that is due (optionally only in
    `workspaces`), skipping those with a sync of their workspace and provider in progress."""
    logger = get_run_logger()
    settings = get_settings()
    started, now = time.monotonic(), utcnow()
    interval = settings.refresh_interval_seconds
    with get_client(sync_client=True) as client:
        busy = refresh.read_busy(client, now, timedelta(seconds=interval))
    with session_scope(settings.resolved_database_url) as session:
        due = refresh.due_mailboxes(session, now, interval, workspaces)
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

    with runtime.round_turns(settings) as turns:
        futures: dict[PrefectFuture[dict[str, Any]], str] = {}
        for job in jobs:
            quick = [m["mailbox_id"] for m in job["mailboxes"] if m["has_cursor"]]
            held = turns.hold(job["job_id"], quick)
            for m in job["mailboxes"]:
                future = refresh_mailbox.submit(
                    job["job_id"],
                    m["mailbox_id"],
                    m["provider"],
                    m["address"],
                    turn_held=held and m["has_cursor"],
                )
                futures[future] = job["job_id"]
        summary = _close_as_they_end(jobs, futures, logger, turns.release)
    _deliver_webhooks([s["job_id"] for s in summary])
    duration = time.monotonic() - started
    create_markdown_artifact(
        _markdown(summary, plan, duration),
        key=refresh.artifact_key("refresh-summary", current_run.get_name() or "round"),
        description="Summary of a scheduled refresh round",
    )
    return {
        "jobs": [{k: v for k, v in s.items() if k != "results"} for s in summary],
        "skipped": [{"mailbox_id": s.mailbox.mailbox_id, "reason": s.reason} for s in plan.skipped],
        "duration_s": round(duration, 3),
    }


def _close_as_they_end(
    jobs: list[dict[str, Any]],
    futures: dict[PrefectFuture[dict[str, Any]], str],
    logger: Any,
    on_done: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Close each job once its mailboxes are done, a batch of jobs per transaction (at
    least every second), so a quick job does not wait for the round's slowest mailbox;
    `on_done(job_id)` as soon as a job's mailboxes are (its turns are given back)."""
    by_id = {job["job_id"]: job for job in jobs}
    per_job: dict[str, list[PrefectFuture[dict[str, Any]]]] = {job_id: [] for job_id in by_id}
    for future, job_id in futures.items():
        per_job[job_id].append(future)  # in the order of the job's mailboxes
    left = {job_id: len(f) for job_id, f in per_job.items()}
    summary: list[dict[str, Any]] = []
    ready: list[runtime.JobEnd] = []
    flushed = time.monotonic()

    def flush() -> None:
        nonlocal flushed
        if ready:
            runtime.close_jobs(ready)
            ready.clear()
        flushed = time.monotonic()

    for future in as_completed(list(futures)):
        job_id = futures[future]
        left[job_id] -= 1
        if left[job_id] == 0:
            on_done(job_id)
            job = by_id[job_id]
            outcomes = [_outcome(f) for f in per_job[job_id]]
            results, error = refresh.job_outcome(job["mailboxes"], outcomes)
            ready.append(
                (job_id, [refresh.strip_cursors(r) for r in results], *(error or (None, None)))
            )
            if error:
                logger.warning("job %s of %s failed: %s: %s", job_id, job["workspace_id"], *error)
            summary.append(
                {
                    "job_id": job_id,
                    "workspace_id": job["workspace_id"],
                    "mailboxes": len(job["mailboxes"]),
                    "status": "failed" if error else "completed",
                    "error": error[0] if error else None,
                    "results": results,
                }
            )
        if len(ready) >= 100 or time.monotonic() - flushed > 1:
            flush()
    flush()
    return summary


def _deliver_webhooks(job_ids: list[str]) -> None:
    """One webhook delivery run for the round's events, if any has somewhere to go."""
    if any(dispatch.job_has_deliveries(job_id) for job_id in job_ids):
        with get_client(sync_client=True) as client:
            dispatch.kick(client, f"after-refresh:{current_run.get_id()}")


def _markdown(summary: list[dict[str, Any]], plan: refresh.RefreshPlan, duration: float) -> str:
    added = sum(r.get("counts", {}).get("messages_added", 0) for s in summary for r in s["results"])
    failed = [s for s in summary if s["status"] == "failed"]
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
        resets = sum(1 for r in s["results"] if r.get("reason") == "cursor_reset")
        status = f"failed: `{s['error']}`" if s["error"] else s["status"]
        lines.append(
            f"| {s['job_id']} | {s['workspace_id']} | {s['mailboxes']} | {status} | {resets} |"
        )
    if plan.skipped:
        lines += ["", "| skipped mailbox | workspace | why |", "|---|---|---|"]
        for skip in plan.skipped:
            m = skip.mailbox
            lines.append(f"| {m.provider} {m.address} | {m.workspace_id} | {skip.reason} |")
    return "\n".join(lines) + "\n"
