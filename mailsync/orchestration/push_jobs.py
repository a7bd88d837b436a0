"""A push notification's sync: an incremental job of that one mailbox, coalesced.

The job is like any other (trigger `push`, its flow run of the sync-mailbox deployment,
readable through GET /v1/email/sync/{id} and in the Prefect UI), takes no on-demand quota
slot, and is only made when the mailbox has no push job queued (core/push/coalesce.py): a
burst of notifications makes at most one running sync (the mailbox's Prefect turn) and one
queued.
"""

from __future__ import annotations

from sqlmodel import Session, col, update

from mailsync.core.jobs import store as jobstore
from mailsync.core.push import coalesce
from mailsync.db.tables import Mailbox, SyncJob, SyncMode
from mailsync.errors import PrefectUnavailableError
from mailsync.orchestration.orchestrator import Orchestrator

TRIGGER = "push"


def start_push_sync(
    orchestrator: Orchestrator, session: Session, mailbox: Mailbox
) -> SyncJob | None:
    """The new job, or None when a queued one will see the change already. Raises
    PrefectUnavailableError when Prefect cannot take the run (the slot is free again, the
    job failed), so the provider's redelivery or the next poll catches the change."""
    job = SyncJob(
        workspace_id=mailbox.workspace_id,
        mode=SyncMode.incremental.value,
        providers=[mailbox.provider],
        trigger=TRIGGER,
        mailbox_id=mailbox.id,
    )
    if not coalesce.claim(session, mailbox.id, job.id):
        session.commit()
        return None
    session.add(job)
    session.commit()  # the flow run reads the job, so it must exist before the run does
    try:
        flow_run_id = orchestrator.submit(job)
    except PrefectUnavailableError as exc:
        jobstore.mark_failed(session, job, "orchestrator_unavailable", str(exc))
        coalesce.release(session, mailbox.id, job.id)
        session.commit()
        raise
    session.exec(  # type: ignore[call-overload]
        update(SyncJob).where(col(SyncJob.id) == job.id).values(flow_run_id=flow_run_id)
    )
    session.commit()
    job.flow_run_id = flow_run_id
    return job
