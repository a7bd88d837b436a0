"""One sync job: every requested mailbox synced by its own retryable task."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal
from uuid import UUID

from prefect import Flow, flow, get_client
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRun, State
from prefect.runtime import flow_run as current_run

from mailsync.orchestration import runtime
from mailsync.orchestration.leases import MailboxBusyError, SlotBusyError
from mailsync.orchestration.orchestrator import job_tags
from mailsync.orchestration.rounds import artifact_key, strip_cursors, summary_markdown
from mailsync.providers.base import ProviderError
from tasks.deliver_webhook import deliver_job_event
from tasks.sync_mailbox import close_job, open_job, sync_one_mailbox


def _label_run(job: dict[str, Any]) -> None:
    # Runs started from the Prefect UI get their job id and tags only now; the run should
    # carry them, as runs started by the API do from the start.
    run_id = current_run.get_id()
    tags = job_tags(job["workspace_id"], job["providers"], job["mode"])
    have = list(current_run.get_tags())
    if run_id and (current_run.get_name() != job["job_id"] or not set(tags) <= set(have)):
        with get_client(sync_client=True) as client:
            client.update_flow_run(
                UUID(run_id),
                name=job["job_id"],
                tags=[*have, *(t for t in tags if t not in have)],
            )


def _summarize(
    job: dict[str, Any], results: list[dict[str, Any]], started: float, error: Any
) -> None:
    create_markdown_artifact(
        summary_markdown(job["job_id"], job["mode"], results, time.monotonic() - started, error),
        key=artifact_key("sync-summary", job["job_id"]),
        description=f"Summary of sync job {job['job_id']}",
    )


def _release_slot(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    runtime.release_run_lease(str(flow_run.id))


def _sync_all(job: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    futures = [
        sync_one_mailbox.submit(
            job["job_id"], m["mailbox_id"], m["provider"], m["address"], job["mode"]
        )
        for m in job["mailboxes"]
    ]
    results: list[dict[str, Any]] = []
    error: tuple[str, str] | None = None
    for mailbox, future in zip(job["mailboxes"], futures, strict=True):
        try:
            results.append(future.result())
        except (ProviderError, MailboxBusyError) as exc:
            error = error or (exc.code, f"{mailbox['provider']} {mailbox['address']}: {exc}")
        except Exception as exc:
            error = error or ("internal_error", f"{mailbox['provider']}: {type(exc).__name__}")
    return results, error


@flow(
    name="sync-mailbox",
    log_prints=True,
    on_crashed=[_release_slot],
    on_cancellation=[_release_slot],
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
        runtime.full_sync_slot(job) if job["mode"] == "full" else nullcontext()
    )
    try:
        with slot:
            results, error = _sync_all(job)
            close_job(job["job_id"], [strip_cursors(r) for r in results], *(error or (None, None)))
    except SlotBusyError as exc:
        results, error = [], (exc.code, str(exc))
        close_job(job["job_id"], [], *error)
    # Outside the slot: a slow receiver never holds up the next full sync.
    deliver_job_event(job["job_id"])
    _summarize(job, results, started, error)
    if error:
        raise RuntimeError(f"sync job {job['job_id']} failed: {error[0]}: {error[1]}")
    return {"job_id": job["job_id"], "mailboxes": [strip_cursors(r) for r in results]}
