"""A refresh round's units: batches of already-synced mailboxes, each mailbox retried alone."""

from __future__ import annotations

import pytest

from mailsync.core.jobs.contract import JobRef, MailboxRef
from mailsync.core.schedule.refresh import Retry, batches, sync_batch
from mailsync.core.sync.engine import MailboxResult
from mailsync.errors import AuthError, TransientProviderError


def _job(job_id: str, synced: int, new: int = 0) -> JobRef:
    mailboxes = [MailboxRef(f"{job_id}-{n}", "gmail", f"{n}@x", True) for n in range(synced)] + [
        MailboxRef(f"{job_id}-new{n}", "gmail", f"n{n}@x", False) for n in range(new)
    ]
    return JobRef(job_id, "ws", ("gmail",), "incremental", tuple(mailboxes))


def test_synced_mailboxes_are_batched_and_new_ones_go_alone() -> None:
    """50 jobs of 20 synced mailboxes make batches of at most 10 (1,000 mailboxes: 100 task
    runs, not 1,000); a never-synced mailbox is a unit of its own; every mailbox is in
    exactly one unit of its own job."""
    jobs = [_job(f"j{n}", 20) for n in range(50)] + [_job("fresh", 3, new=2)]
    units = batches(jobs, concurrency=16)
    assert len(units) == 100 + 1 + 2
    assert max(len(m) for _, m in units) == 10
    assert [len(m) for j, m in units if j == "fresh"] == [3, 1, 1]
    seen = [(j, m.mailbox_id) for j, ms in units for m in ms]
    assert sorted(seen) == sorted((j.job_id, m.mailbox_id) for j in jobs for m in j.mailboxes)


def test_a_small_round_still_uses_every_thread() -> None:
    """One workspace of 16 synced mailboxes with 16 threads: 16 units, not 2."""
    assert [len(m) for _, m in batches([_job("j", 16)], concurrency=16)] == [1] * 16
    assert [len(m) for _, m in batches([_job("j", 40)], concurrency=16)] == [3] * 13 + [1]


class Flaky:
    def __init__(self, failures: dict[str, list[BaseException]]) -> None:
        self.failures, self.calls = failures, []  # type: ignore[var-annotated]

    def __call__(self, mailbox: MailboxRef) -> MailboxResult:
        self.calls.append(mailbox.mailbox_id)
        pending = self.failures.get(mailbox.mailbox_id)
        if pending:
            raise pending.pop(0)
        return _result(mailbox.mailbox_id)


def _result(mailbox_id: str) -> MailboxResult:
    return MailboxResult(mailbox_id, "gmail", "x", "incremental", "incremental")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientProviderError)


def test_a_transient_failure_retries_that_mailbox_only_after_the_delays() -> None:
    """A mailbox throttled twice is synced on its third attempt, after 2 s then 10 s; the
    batch's other mailboxes are synced once each."""
    sync = Flaky({"j-1": [TransientProviderError("429"), TransientProviderError("429")]})
    sleeps: list[float] = []
    outcomes = sync_batch(list(_job("j", 3).mailboxes), sync, _transient, sleep=sleeps.append)
    assert outcomes == [_result("j-0"), _result("j-1"), _result("j-2")]
    assert sync.calls == ["j-0", "j-1", "j-1", "j-1", "j-2"] and sleeps == [2.0, 10.0]


def test_a_lasting_or_permanent_failure_is_the_mailboxs_outcome_and_the_rest_go_on() -> None:
    """Bad credentials are not retried; a transient failure outlasting the retries is given
    up after the last; both are returned as those mailboxes' outcomes, in order."""
    auth = AuthError("revoked")
    lasting = [TransientProviderError("503") for _ in range(5)]
    sync = Flaky({"j-0": [auth], "j-1": lasting})
    outcomes = sync_batch(
        list(_job("j", 3).mailboxes), sync, _transient, Retry((0.5,)), lambda _: None
    )
    assert outcomes[0] is auth and isinstance(outcomes[1], TransientProviderError)
    assert outcomes[2] == _result("j-2")
    assert sync.calls == ["j-0", "j-1", "j-1", "j-2"]


@pytest.mark.parametrize("concurrency", [1, 4, 64])
def test_units_never_exceed_the_batch_size(concurrency: int) -> None:
    """Whatever the thread count, a unit holds 1..10 mailboxes of one job."""
    units = batches([_job("a", 37), _job("b", 5, new=1)], concurrency)
    assert all(1 <= len(m) <= 10 for _, m in units)
