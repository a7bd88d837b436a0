"""One sync job: every requested mailbox synced by its own retryable task."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_client
from prefect.runtime import flow_run

from mailsync.providers.base import ProviderError
from tasks.sync_mailbox import close_job, open_job, sync_one_mailbox


def _rename_run(job_id: str) -> None:
    # Runs started from the Prefect UI get their job id only now; the run should carry it.
    run_id = flow_run.get_id()
    if run_id and flow_run.get_name() != job_id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(run_id), name=job_id)


@flow(name="sync-mailbox", log_prints=True)
def sync_mailbox(
    job_id: str | None = None,
    workspace: str | None = None,
    providers: list[Literal["gmail", "microsoft"]] | None = None,
    mode: Literal["incremental", "full"] = "incremental",
) -> dict[str, Any]:
    job = open_job(job_id, workspace, list(providers or []), mode, flow_run.get_id())
    _rename_run(job["job_id"])
    futures = [
        sync_one_mailbox.submit(m["mailbox_id"], m["provider"], m["address"], job["mode"])
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
    close_job(job["job_id"], results, *(error or (None, None)))
    if error:
        raise RuntimeError(f"sync job {job['job_id']} failed: {error[0]}")
    return {"job_id": job["job_id"], "mailboxes": results}
