"""The one outcome mapping (mailsync/core/jobs/outcomes.py), as both rounds use it."""

from __future__ import annotations

import pytest

from mailsync.core.jobs.contract import JobError, JobRef, MailboxRef
from mailsync.core.jobs.outcomes import job_end
from mailsync.core.sync.engine import MailboxResult
from mailsync.errors import MailboxBusyError, MailsyncError, TransientProviderError

GMAIL = MailboxRef("mbx_1", "gmail", "ada@example.com")
GRAPH = MailboxRef("mbx_2", "microsoft", "bob@example.com")
JOB = JobRef("sync_1", "ws_1", ("gmail", "microsoft"), "incremental", (GMAIL, GRAPH))


def synced(ref: MailboxRef) -> MailboxResult:
    return MailboxResult(ref.mailbox_id, ref.provider, ref.address, "incremental", "incremental")


def test_a_busy_mailbox_ends_the_job_as_sync_in_progress() -> None:
    """A mailbox whose turn another sync held ends its job with sync_in_progress, whether
    the sync flow or a refresh round ran it (a round once recorded internal_error)."""
    end = job_end(JOB, [synced(GMAIL), MailboxBusyError("another sync holds it")])
    assert end.error == JobError(
        "sync_in_progress", "microsoft bob@example.com: another sync holds it"
    )
    assert [r.mailbox_id for r in end.results] == ["mbx_1"]


def test_the_first_failure_in_mailbox_order_names_the_job_error() -> None:
    """Two failures: the job carries the first mailbox's, the order of the job's mailboxes."""
    end = job_end(JOB, [TransientProviderError("503 from Gmail"), KeyError("x")])
    assert end.error is not None and end.error.code == "provider_unavailable"
    assert end.results == ()


def test_a_bug_is_internal_error_named_by_type_only() -> None:
    """An exception that is not ours is internal_error and its message is left out: it
    could carry a credential."""
    end = job_end(JOB, [synced(GMAIL), ValueError("refresh_token=1//secret")])
    assert end.error == JobError("internal_error", "microsoft: ValueError")


def test_our_errors_show_their_public_message() -> None:
    """An error of ours shows its public message, which may differ from its log message."""

    class Quiet(MailsyncError):
        code = "service_unavailable"

        @property
        def public_message(self) -> str:
            return "retry shortly"

    end = job_end(JOB, [Quiet("http://10.0.0.1 refused"), synced(GRAPH)])
    assert end.error == JobError("service_unavailable", "gmail ada@example.com: retry shortly")


def test_all_synced_is_no_error_and_counts_sum() -> None:
    """Every mailbox synced: no error; the job's counts are the sum of its mailboxes'."""
    first, second = synced(GMAIL), synced(GRAPH)
    first.counts.added, second.counts.added = 3, 4
    end = job_end(JOB, [first, second])
    assert end.error is None and end.counts()["messages_added"] == 7


def test_outcomes_must_match_the_mailboxes() -> None:
    """An outcome list of the wrong length is a bug in the caller, never a silent zip."""
    with pytest.raises(ValueError):
        job_end(JOB, [synced(GMAIL)])
