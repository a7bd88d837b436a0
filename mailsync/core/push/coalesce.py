"""At most one push-started sync queued per mailbox, however many notifications arrive.

The slot is a column of the mailbox's push row, taken by compare-and-set: a notification
that finds it taken adds nothing (the queued sync has not started, so it will see the
change). The sync gives it back once it holds the mailbox's turn (the Prefect limit of one
sync per mailbox at a time), so the next notification queues the next sync. A slot whose job
ended without starting (its run failed or never came) counts as free.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, or_, select, update

from mailsync.db.tables import JobStatus, MailboxPush, SyncJob

_ENDED = (JobStatus.completed.value, JobStatus.failed.value)


def claim(session: Session, mailbox_id: str, job_id: str) -> bool:
    """Take the mailbox's queued-sync slot for `job_id`; False when a queued sync holds it."""
    ended = select(SyncJob.id).where(col(SyncJob.status).in_(_ENDED))
    result = session.exec(  # type: ignore[call-overload]
        update(MailboxPush)
        .where(
            col(MailboxPush.mailbox_id) == mailbox_id,
            or_(
                col(MailboxPush.queued_job_id).is_(None),
                col(MailboxPush.queued_job_id).in_(ended),
            ),
        )
        .values(queued_job_id=job_id)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)


def release(session: Session, mailbox_id: str, job_id: str) -> bool:
    """Give the slot back (the job now holds the mailbox's turn, or never will)."""
    result = session.exec(  # type: ignore[call-overload]
        update(MailboxPush)
        .where(col(MailboxPush.mailbox_id) == mailbox_id, col(MailboxPush.queued_job_id) == job_id)
        .values(queued_job_id=None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)


def note_notification(session: Session, mailbox_id: str, now: datetime) -> None:
    session.exec(  # type: ignore[call-overload]
        update(MailboxPush)
        .where(col(MailboxPush.mailbox_id) == mailbox_id)
        .values(last_notification_at=now)
        .execution_options(synchronize_session=False)
    )
