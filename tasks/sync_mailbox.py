"""The retryable unit of a sync: one mailbox at one provider."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from prefect import Task, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from mailsync.core.jobs.contract import JobEnd, JobRef
from mailsync.core.sync.engine import MailboxResult
from mailsync.db import connection_lost
from mailsync.errors import (
    CredentialsChangedError,
    PrefectUnavailableError,
    TransientProviderError,
    TurnLapsedError,
)
from mailsync.orchestration import runtime


def is_transient_error(exc: BaseException) -> bool:
    """Throttling, outages and timeouts; never bad credentials or bugs.

    A lost app-database connection counts too (tests/drills/test_drills.py drops it mid-sync): the
    page being written was rolled back with its checkpoint, so the retry resumes from the last
    stored page and converges to the same index. Before, one killed backend failed the job."""
    retried = (
        TransientProviderError,
        PrefectUnavailableError,
        TurnLapsedError,
        CredentialsChangedError,
    )
    if isinstance(exc, retried):
        return True
    return isinstance(exc, Exception) and connection_lost(exc)


def is_transient(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry what is transient (is_transient_error)."""
    try:
        state.result()
    except Exception as exc:
        return is_transient_error(exc)
    return False


@task(
    name="sync-mailbox-provider",
    task_run_name="{provider}:{address}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def sync_one_mailbox(
    job_id: str, mailbox_id: str, provider: str, address: str, mode: str, push: bool = False
) -> MailboxResult:
    to_job = runtime.job_progress(job_id).reporter(mailbox_id)
    # Created at the first page with an estimate (a full build): an incremental sync has no
    # estimate and ends within a second, so it spares Prefect the artifact's two calls.
    artifact: UUID | None = None

    def report(processed: int, estimate: int | None) -> None:
        nonlocal artifact
        to_job(processed, estimate)
        if not estimate:
            return
        share = min(100.0, 100.0 * processed / estimate)
        if artifact is None:
            description = f"Messages of {provider} {address} processed in job {job_id}"
            artifact = cast(UUID, create_progress_artifact(share, description=description))
        else:
            update_progress_artifact(artifact, share)

    on_turn = (lambda: runtime.push_turn_taken(job_id, mailbox_id)) if push else None
    result = runtime.run_mailbox(mailbox_id, mode, progress=report, on_turn=on_turn)
    if artifact is not None:
        update_progress_artifact(artifact, 100.0)
    return result


@task(name="open-job", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def open_job(
    job_id: str | None,
    workspace: str | None,
    providers: list[str] | None,
    mode: str,
    flow_run_id: str | None,
) -> JobRef:
    return runtime.open_job(job_id, workspace, providers, mode, flow_run_id)


@task(name="close-job", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def close_job(end: JobEnd) -> None:
    # The job's webhook event is recorded with its end (tasks/deliver_webhook.py sends it).
    runtime.close_job(end)
