"""One sync job: every requested mailbox synced by its own retryable task."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_client
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run as current_run

from mailsync.core.jobs.contract import JobEnd, JobRef, MailboxOutcome
from mailsync.core.jobs.outcomes import job_end, job_failed
from mailsync.core.schedule.summaries import artifact_key, summary_markdown
from mailsync.errors import SyncInProgressError
from mailsync.orchestration import runtime
from mailsync.orchestration.orchestrator import job_tags
from tasks.deliver_webhook import deliver_job_event
from tasks.sync_mailbox import close_job, open_job, sync_one_mailbox


def _label_run(job: JobRef) -> None:
    # Runs started from the Prefect UI get their job id and tags only now; the run should
    # carry them, as runs started by the API do from the start.
    run_id = current_run.get_id()
    tags = job_tags(job.workspace_id, list(job.providers), job.mode)
    have = list(current_run.get_tags())
    if run_id and (current_run.get_name() != job.job_id or not set(tags) <= set(have)):
        with get_client(sync_client=True) as client:
            client.update_flow_run(
                UUID(run_id),
                name=job.job_id,
                tags=[*have, *(t for t in tags if t not in have)],
            )


def _summarize(job: JobRef, end: JobEnd, started: float) -> None:
    create_markdown_artifact(
        summary_markdown(job, end, time.monotonic() - started),
        key=artifact_key("sync-summary", job.job_id),
        description=f"Summary of sync job {job.job_id}",
    )


def _sync_all(job: JobRef) -> JobEnd:
    futures = [
        sync_one_mailbox.submit(
            job.job_id, m.mailbox_id, m.provider, m.address, job.mode, push=job.push
        )
        for m in job.mailboxes
    ]
    outcomes: list[MailboxOutcome] = []
    for future in futures:
        try:
            outcomes.append(future.result())
        except Exception as exc:
            outcomes.append(exc)
    return job_end(job, outcomes)


@flow(
    name="sync-mailbox",
    log_prints=True,
    on_crashed=[runtime.release_leases_hook],
    on_cancellation=[runtime.release_leases_hook],
)
def sync_mailbox(
    job_id: str | None = None,
    workspace: str | None = None,
    providers: list[Literal["gmail", "microsoft"]] | None = None,
    mode: Literal["incremental", "full"] = "incremental",
) -> dict[str, Any]:
    started = time.monotonic()
    job = open_job(job_id, workspace, list(providers or []), mode, current_run.get_id())
    _label_run(job)
    # A full sync holds its workspace+provider slot until its job is recorded as ended.
    slot: AbstractContextManager[None] = (
        runtime.full_sync_slot(job) if job.mode == "full" else nullcontext()
    )
    try:
        with slot:
            end = _sync_all(job)
            close_job(end)
    except SyncInProgressError as exc:
        end = job_failed(job, exc)
        close_job(end)
    # Outside the slot: a slow receiver never holds up the next full sync.
    deliver_job_event(job.job_id)
    _summarize(job, end, started)
    if end.error:
        raise RuntimeError(f"sync job {job.job_id} failed: {end.error.code}: {end.error.message}")
    return {"job_id": job.job_id, "mailboxes": end.mailbox_entries()}
