"""One sync job: every requested mailbox synced by its own retryable task."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal
from uuid import UUID

from prefect import Flow, flow, get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.runtime import flow_run as current_run

from mailsync import runtime
from mailsync.leases import SlotBusyError
from mailsync.providers.base import ProviderError
from tasks.sync_mailbox import close_job, open_job, sync_one_mailbox


def _rename_run(job_id: str) -> None:
    # Runs started from the Prefect UI get their job id only now; the run should carry it.
    run_id = current_run.get_id()
    if run_id and current_run.get_name() != job_id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(run_id), name=job_id)


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
        except ProviderError as exc:
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
    job = open_job(job_id, workspace, list(providers or []), mode, current_run.get_id())
    _rename_run(job["job_id"])
    # A full sync holds its workspace+provider slot until its job is recorded as ended.
    slot: AbstractContextManager[None] = (
        runtime.full_sync_slot(job) if job["mode"] == "full" else nullcontext()
    )
    try:
        with slot:
            results, error = _sync_all(job)
            close_job(job["job_id"], results, *(error or (None, None)))
    except SlotBusyError as exc:
        error = (exc.code, str(exc))
        close_job(job["job_id"], [], *error)
    if error:
        raise RuntimeError(f"sync job {job['job_id']} failed: {error[0]}: {error[1]}")
    return {"job_id": job["job_id"], "mailboxes": results}
