"""The one mapping from what a job's mailboxes came to, to how the job ends (both rounds use it)."""

from __future__ import annotations

from collections.abc import Sequence

from mailsync.core.jobs.contract import (
    JobEnd,
    JobError,
    JobRef,
    MailboxFailure,
    MailboxOutcome,
    MailboxRef,
)
from mailsync.errors import MailsyncError, job_error_code


def mailbox_error(mailbox: MailboxRef, exc: BaseException) -> JobError:
    """A mailbox's failure as a job error. Our own errors keep their code and message; any
    other exception is a bug, named by its type only (its message could carry a secret)."""
    if isinstance(exc, MailsyncError):
        return JobError(exc.code, f"{mailbox.provider} {mailbox.address}: {exc.public_message}")
    return JobError(job_error_code(exc), f"{mailbox.provider}: {type(exc).__name__}")


def job_end(job: JobRef, outcomes: Sequence[MailboxOutcome]) -> JobEnd:
    """The job's end from its mailboxes' outcomes, in the job's mailbox order: the results of
    those that synced, and the error of the first that did not."""
    if len(outcomes) != len(job.mailboxes):
        raise ValueError(f"{len(outcomes)} outcomes for {len(job.mailboxes)} mailboxes")
    results, failures = [], []
    for mailbox, outcome in zip(job.mailboxes, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failures.append(
                MailboxFailure(
                    mailbox.mailbox_id,
                    mailbox_error(mailbox, outcome),
                    mailbox.provider,
                    mailbox.address,
                    job.mode,
                )  # fmt: skip
            )
        else:
            results.append(outcome)
    error = failures[0].error if failures else None
    return JobEnd(job.job_id, tuple(results), error, tuple(failures))


def job_failed(job: JobRef, exc: MailsyncError) -> JobEnd:
    """A job that ended before any of its mailboxes synced (its full-sync slot was taken)."""
    return JobEnd(job.job_id, (), JobError(exc.code, exc.public_message))
