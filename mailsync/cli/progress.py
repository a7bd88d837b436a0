"""Following a sync job in the terminal: its status changes, then its counts or its error."""

from __future__ import annotations

import time

from mailsync import db
from mailsync.cli.common import console
from mailsync.db.tables import JobStatus, SyncJob
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings


def follow(settings: Settings, orchestrator: Orchestrator, job_id: str) -> SyncJob:
    """Print status changes of a job until it ends."""
    last = ""
    with console.status(f"{job_id}: queued") as status:
        while True:
            with db.session_scope(settings.resolved_database_url) as session:
                job = session.get(SyncJob, job_id)
                assert job is not None
                orchestrator.refresh(session, job)
            if job.status != last:
                console.print(f"{job_id}: {job.status}")
                last = job.status
            status.update(f"{job_id}: {job.status}")
            if JobStatus(job.status).terminal:
                break
            time.sleep(0.5)
    counts = ", ".join(f"{k.removeprefix('messages_')} {v}" for k, v in job.counts.items())
    if job.error_code:
        console.print(f"[red]failed[/red] {job.error_code}: {job.error_message}")
    else:
        console.print(f"[green]completed[/green] messages {counts}")
    return job
