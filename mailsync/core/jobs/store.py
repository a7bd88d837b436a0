"""Sync-job records: creation, the transitions a run makes, and their public view."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select, update

from mailsync.db.tables import JobStatus, Mailbox, MailboxStatus, SyncJob, Workspace, iso, utcnow
from mailsync.errors import NoMailboxError, UnknownWorkspaceError
from mailsync.webhooks import outbox


def connected_mailboxes(
    session: Session,
    workspace_id: str,
    providers: list[str] | None,
    status: MailboxStatus = MailboxStatus.active,
) -> list[Mailbox]:
    """The workspace's mailboxes (of `providers`) in `status`: active ones are what a job syncs."""
    query = select(Mailbox).where(Mailbox.workspace_id == workspace_id, Mailbox.status == status)
    mailboxes = list(session.exec(query.order_by(Mailbox.provider, Mailbox.address)))
    if providers:
        mailboxes = [m for m in mailboxes if m.provider in providers]
    return mailboxes


def build_job(
    session: Session, workspace_id: str, mode: str, provider: str | None, *, trigger: str = "api"
) -> SyncJob:
    """Validate the request against the connected mailboxes; the job is not stored yet."""
    if session.get(Workspace, workspace_id) is None:
        raise UnknownWorkspaceError(f"workspace {workspace_id!r} does not exist")
    mailboxes = connected_mailboxes(session, workspace_id, [provider] if provider else None)
    if not mailboxes:
        what = f"no {provider} mailbox" if provider else "no mailbox"
        refused = connected_mailboxes(
            session, workspace_id, [provider] if provider else None, MailboxStatus.reauth_required
        )
        if refused:
            ids = ", ".join(m.id for m in refused[:5])
            raise NoMailboxError(
                f"re-authorization needed: {what} of this workspace can be synced; the "
                f"provider refused the grant of {ids} (reconnect with POST "
                "/v1/mailboxes/connect and its mailbox_id)"
            )
        raise NoMailboxError(f"{what} is connected to this workspace")
    providers = sorted({m.provider for m in mailboxes})
    return SyncJob(workspace_id=workspace_id, mode=mode, providers=providers, trigger=trigger)


def new_job(
    session: Session, workspace_id: str, mode: str, provider: str | None, *, trigger: str = "api"
) -> SyncJob:
    """Validate the request against the connected mailboxes and record a queued job."""
    job = build_job(session, workspace_id, mode, provider, trigger=trigger)
    session.add(job)
    session.flush()
    return job


# A job is open until its first terminal transition; every transition below is a
# compare-and-set on the stored status, so a copy of the job read before a slow Prefect call
# never rewrites what a flow committed meanwhile (issue: a GET setting `running` over
# `completed`, or `job_failed` over the flow's own outcome).
_OPEN = (JobStatus.queued.value, JobStatus.running.value)


def _started_at_or(now: datetime) -> Any:
    """started_at as stored, or `now` for a job that never started (typed as the column)."""
    column = SyncJob.__table__.c.started_at  # type: ignore[attr-defined]
    return sa.func.coalesce(col(SyncJob.started_at), sa.literal(now, column.type))


def mark_running(session: Session, job: SyncJob, flow_run_id: str | None) -> None:
    """queued -> running, and the first flow run's id; `job` is reloaded with what is stored."""
    session.flush()
    session.exec(  # type: ignore[call-overload]
        update(SyncJob)
        .where(col(SyncJob.id) == job.id, col(SyncJob.status) == JobStatus.queued.value)
        .values(status=JobStatus.running.value, started_at=_started_at_or(utcnow()))
    )
    if flow_run_id:
        link_run(session, job, flow_run_id)
    else:
        session.refresh(job)


def link_run(session: Session, job: SyncJob, flow_run_id: str) -> None:
    """Record the flow run created for a job that has none recorded (compare-and-set)."""
    session.flush()
    session.exec(  # type: ignore[call-overload]
        update(SyncJob)
        .where(col(SyncJob.id) == job.id, col(SyncJob.flow_run_id).is_(None))
        .values(flow_run_id=flow_run_id)
    )
    session.refresh(job)


def mark_finished(
    session: Session,
    job: SyncJob,
    *,
    counts: dict[str, int],
    mailboxes: list[dict[str, Any]],
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Record the job's end, and its webhook event in the same transaction (the outbox),
    once: False (and nothing written) when the job had already ended. `job` is reloaded
    with what is stored."""
    session.flush()
    now = utcnow()
    ended = session.exec(  # type: ignore[call-overload]
        update(SyncJob)
        .where(col(SyncJob.id) == job.id, col(SyncJob.status).in_(_OPEN))
        .values(
            status=(JobStatus.failed if error_code else JobStatus.completed).value,
            started_at=_started_at_or(now),
            finished_at=now,
            counts=counts,
            mailboxes=mailboxes,
            error_code=error_code,
            error_message=error_message,
        )
    )
    session.refresh(job)
    if ended.rowcount != 1:
        return False
    outbox.record_job_event(session, job, public_view(job))
    return True


def mark_failed(session: Session, job: SyncJob, code: str, message: str) -> bool:
    """A failure seen from outside the run (crash, cancellation, submission error); False
    when the job had already ended (its outcome stands)."""
    return mark_finished(
        session,
        job,
        counts=job.counts,
        mailboxes=job.mailboxes,
        error_code=code,
        error_message=message,
    )


def public_view(job: SyncJob, *, brief: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status,
        "mode": job.mode,
        "queued_at": iso(job.queued_at),
    }
    if brief:
        return data
    data.update(
        providers=list(job.providers),
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
        counts=job.counts or None,
        progress=job.progress or None,
        mailboxes=[
            {k: v for k, v in m.items() if k != "mailbox_id"} for m in (job.mailboxes or [])
        ],
        error=({"code": job.error_code, "message": job.error_message} if job.error_code else None),
    )
    return data
