"""The units of a refresh round: a batch of one job's mailboxes, incrementally; the open jobs'
reconciliation with their flow runs."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mailsync.core.jobs.contract import MailboxOutcome, MailboxRef
from mailsync.core.push import channels
from mailsync.core.schedule import refresh
from mailsync.core.sync.engine import MailboxResult
from mailsync.orchestration import runtime
from mailsync.settings import get_settings
from tasks.sync_mailbox import is_transient_error


@task(name="refresh-mailboxes", task_run_name="{label}", cache_policy=NO_CACHE)
def refresh_batch(
    job_id: str, label: str, mailboxes: list[MailboxRef], turn_key: str | None = None
) -> list[MailboxOutcome]:
    """Each mailbox's result or the exception it ended with, in order (refresh.sync_batch):
    transient failures are tried again per mailbox inside the batch, so a retry never syncs
    the batch's other mailboxes twice. `turn_key`: the round holds the batch's turns under
    that key (runtime.RoundTurns), and the syncs write behind that lease's fence. No progress
    artifact: most mailboxes of a round have nothing new."""

    def sync(mailbox: MailboxRef) -> MailboxResult:
        return runtime.run_mailbox(mailbox.mailbox_id, "incremental", turn_key=turn_key)

    return refresh.sync_batch(mailboxes, sync, is_transient_error, logger=get_run_logger())


@task(name="reconcile-jobs", cache_policy=NO_CACHE)
def reconcile_jobs() -> list[tuple[str, str]]:
    """Open jobs whose run failed, vanished or never came are failed, runs created for jobs
    that do not record them are linked (core/jobs/reconcile.py); each change is logged."""
    done = runtime.reconcile_jobs()
    logger = get_run_logger()
    for job_id, what in done:
        logger.info("job %s: %s", job_id, what)
    return done


@task(name="maintain-push", cache_policy=NO_CACHE)
def maintain_push() -> dict[str, int]:
    """Open the push channels the connected mailboxes lack, renew those that lapse soon
    (core/push/channels.py); a failure marks that mailbox's push failing, logged."""
    report = channels.maintain(get_settings())
    logger = get_run_logger()
    for line in report.lines():
        logger.info("%s", line)
    return report.counts()
