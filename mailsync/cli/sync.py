"""Sync job commands: trigger a sync as the API does, list recent jobs, fail a stuck one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table
from sqlmodel import col, select

from mailsync import db
from mailsync.cli.common import console, fail, ready_settings
from mailsync.cli.progress import follow
from mailsync.db.tables import JobStatus, SyncJob, iso
from mailsync.errors import (
    NoMailboxError,
    PrefectUnavailableError,
    RateLimitedError,
    SyncInProgressError,
    UnknownWorkspaceError,
)
from mailsync.orchestration.orchestrator import Orchestrator

job_app = typer.Typer(help="One sync job.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `sync`, `jobs` and the `job` group to `app`."""
    app.command()(sync)
    app.command()(jobs)
    app.add_typer(job_app, name="job")


def sync(
    workspace: Annotated[str, typer.Option("--workspace", "-w")],
    mode: Annotated[str, typer.Option(help="incremental or full")] = "incremental",
    provider: Annotated[str | None, typer.Option(help="gmail or microsoft")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
) -> None:
    """Trigger a sync job, as the API does."""
    if mode not in ("incremental", "full"):
        raise fail("--mode must be incremental or full")
    if provider not in (None, "gmail", "microsoft"):
        raise fail("--provider must be gmail or microsoft")
    settings = ready_settings()
    orchestrator = Orchestrator(settings.resolved_prefect_api_url, settings)
    with db.session_scope(settings.resolved_database_url) as session:
        try:
            job = orchestrator.trigger(session, workspace, mode, provider, trigger="cli")
        except (
            NoMailboxError,
            UnknownWorkspaceError,
            SyncInProgressError,  # its message names the job holding the provider
            RateLimitedError,
        ) as exc:
            raise fail(str(exc)) from exc
        except PrefectUnavailableError as exc:
            raise fail(f"{exc}; is `mailsync up` running?") from exc
    console.print(f"queued {job.id}")
    if wait:
        job = follow(settings, orchestrator, job.id)
        if job.status == JobStatus.failed:
            raise typer.Exit(1)


@job_app.command("fail")
def job_fail(
    job_id: str,
    reason: Annotated[str, typer.Option(help="Why; recorded in the job's error message.")],
) -> None:
    """Fail a job that is stuck open and give back its full-sync slot (its provider then
    accepts syncs again). A run still working on it is not stopped: cancel it in the Prefect
    UI; whatever it records later is refused (a job ends once)."""
    settings = ready_settings()
    orchestrator = Orchestrator(settings.resolved_prefect_api_url, settings)
    try:
        with db.session_scope(settings.resolved_database_url) as session:
            job = session.get(SyncJob, job_id)
            if job is None:
                raise fail(f"no job {job_id}")
            if not orchestrator.fail_job(
                session, job, "job_failed", f"failed by an administrator: {reason}"
            ):
                raise fail(f"job {job_id} already ended ({job.status})")
    finally:
        orchestrator.close()
    console.print(f"{job_id}: failed")


def jobs(
    workspace: Annotated[str | None, typer.Option("--workspace", "-w")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """A table of recent sync jobs."""
    settings = ready_settings()
    # Job ids are what people copy from here: never shortened, however narrow the terminal.
    job_column = Column("job", no_wrap=True, min_width=len("sync_") + 26)
    table = Table(
        job_column, "workspace", "mode", "providers", "status", "queued", "finished", "counts"
    )
    with db.session_scope(settings.resolved_database_url) as session:
        query = select(SyncJob).order_by(col(SyncJob.queued_at).desc()).limit(limit)
        if workspace:
            query = query.where(SyncJob.workspace_id == workspace)
        for job in session.exec(query):
            counts = " ".join(f"{k.removeprefix('messages_')}={v}" for k, v in job.counts.items())
            table.add_row(
                job.id, job.workspace_id, job.mode, ",".join(job.providers), job.status,
                iso(job.queued_at), iso(job.finished_at) or "", counts or job.error_code or "",
            )  # fmt: skip
    Console().print(table)  # sized to the terminal (COLUMNS) of this invocation
