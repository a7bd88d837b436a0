"""What a flow run needs from the environment: settings, the credential box, job transitions."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from prefect import Flow, get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.runtime import flow_run as current_run
from sqlmodel import col, delete, select, update

from mailsync.core import mailboxes
from mailsync.core.jobs import store as jobstore
from mailsync.core.jobs.contract import JobEnd, JobRef, MailboxRef
from mailsync.core.push import coalesce
from mailsync.core.rules.admission import mailbox_limit
from mailsync.core.sync.engine import Fence, MailboxResult, Progress, sync_mailbox
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import JobStatus, RunLease, SyncJob
from mailsync.errors import JobEndedError, JobNotFoundError, PrefectUnavailableError
from mailsync.orchestration.leases import FullSyncSlot, MailboxTurn, MailboxTurns, RunLeases
from mailsync.orchestration.limits import PrefectLimits
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings, get_settings

log = logging.getLogger(__name__)


def open_job(
    job_id: str | None,
    workspace: str | None,
    providers: list[str] | None,
    mode: str,
    flow_run_id: str | None,
    *,
    trigger: str = "ui",
    settings: Settings | None = None,
) -> JobRef:
    """Mark the job running (creating it first for runs started outside the API)."""
    settings = settings or get_settings()
    with session_scope(settings.resolved_database_url) as session:
        job: SyncJob | None = None
        if job_id:
            job = session.get(SyncJob, job_id)
            if job is None:
                raise JobNotFoundError(f"sync job {job_id} does not exist")
            if JobStatus(job.status).terminal:
                # A run created for a job that already ended (the API gave up waiting on
                # Prefect and failed it; a UI "retry" of an ended run): the job's outcome
                # and its webhook event stand, and it must not run without its slot.
                raise JobEndedError(f"sync job {job_id} already ended ({job.status})")
        else:
            if not workspace:
                raise ValueError("a run started without job_id needs the workspace parameter")
            provider = providers[0] if providers and len(providers) == 1 else None
            job = jobstore.new_job(session, workspace, mode, provider, trigger=trigger)
        push = job.trigger == "push"
        if push:
            # Queued until it holds its mailbox's turn (push_turn_taken).
            if flow_run_id:
                jobstore.link_run(session, job, flow_run_id)
        else:
            jobstore.mark_running(session, job, flow_run_id)
        mailboxes = jobstore.connected_mailboxes(session, job.workspace_id, job.providers)
        if job.mailbox_id is not None:
            mailboxes = [m for m in mailboxes if m.id == job.mailbox_id]
        return JobRef(
            job.id,
            job.workspace_id,
            tuple(job.providers),
            job.mode,
            tuple(MailboxRef(m.id, m.provider, m.address, m.cursor is not None) for m in mailboxes),
            lease_id=job.lease_id,
            push=push,
        )


def push_turn_taken(job_id: str, mailbox_id: str, settings: Settings | None = None) -> None:
    """A push job now holds its mailbox's turn: it is running, and the next notification may
    queue the next sync (core/push/coalesce.py)."""
    settings = settings or get_settings()
    with session_scope(settings.resolved_database_url) as session:
        coalesce.release(session, mailbox_id, job_id)
        job = session.get(SyncJob, job_id)
        if job is not None:
            jobstore.mark_running(session, job, None)


class JobProgress:
    """Sums the progress of a job's mailboxes (synced by concurrent tasks in one flow run)
    into the job row, which the API reports while the job runs."""

    def __init__(self, job_id: str, settings: Settings) -> None:
        self.job_id, self.settings = job_id, settings
        self._per_mailbox: dict[str, tuple[int, int | None]] = {}
        self._lock = threading.Lock()

    def reporter(self, mailbox_id: str) -> Progress:
        def report(processed: int, estimate: int | None) -> None:
            with self._lock:
                self._per_mailbox[mailbox_id] = (processed, estimate)
                figures = {"processed": sum(p for p, _ in self._per_mailbox.values())}
                estimates = [e for _, e in self._per_mailbox.values()]
                if estimates and all(e is not None for e in estimates):
                    figures["estimated_total"] = sum(e or 0 for e in estimates)
                with session_scope(self.settings.resolved_database_url) as session:
                    session.exec(  # type: ignore[call-overload]
                        update(SyncJob)
                        .where(col(SyncJob.id) == self.job_id)
                        .values(progress=figures)
                    )

        return report


_progress: dict[str, JobProgress] = {}
_progress_lock = threading.Lock()


def job_progress(job_id: str, settings: Settings | None = None) -> JobProgress:
    with _progress_lock:
        if job_id not in _progress:
            _progress[job_id] = JobProgress(job_id, settings or get_settings())
        return _progress[job_id]


def run_mailbox(
    mailbox_id: str,
    mode: str,
    progress: Progress | None = None,
    settings: Settings | None = None,
    *,
    turn_key: str | None = None,
    on_turn: Callable[[], None] | None = None,
) -> MailboxResult:
    """Sync one mailbox, in its turn: never two syncs of one mailbox at once. `turn_key`: the
    refresh round of this flow run holds the turn already under that key (RoundTurns); the
    sync writes behind that lease's fence. A key the round does not hold takes its own turn;
    `on_turn` is called once it is taken, before the sync."""
    settings = settings or get_settings()
    fence = held_fence(turn_key) if turn_key else None
    if fence is not None:
        return sync_now(mailbox_id, mode, settings, progress=progress, fence=fence)
    with mailbox_turn(mailbox_id, settings) as turn:
        if on_turn is not None:
            on_turn()
        # Once its lease lapses another sync may take the turn: this one writes no more.
        return sync_now(
            mailbox_id, mode, settings, progress=progress, fence=lambda: not turn.lapsed
        )


def sync_now(
    mailbox_id: str,
    mode: str,
    settings: Settings,
    progress: Progress | None = None,
    fence: Fence | None = None,
) -> MailboxResult:
    """Sync one mailbox with the configured providers, without asking for its turn (the
    caller holds it, or is alone: tests of the sync itself)."""
    return sync_mailbox(
        settings.resolved_database_url,
        mailbox_id,
        mode,
        box=CredentialBox(settings.fernet_key()),
        endpoints=settings.provider_endpoints,
        options=settings.provider_options,
        progress=progress,
        fence=fence,
    )


@contextmanager
def mailbox_turn(mailbox_id: str, settings: Settings) -> Iterator[MailboxTurn]:
    """Hold the mailbox's Prefect slot (limit 1, on any worker) while it syncs; wait for it.

    Why: the sync rules let an incremental run beside a full sync, and two incrementals run at
    once; but two builds of one mailbox at once (an explicit full sync beside a first or
    cursor-reset incremental, which becomes a full build) overwrite each other's generation
    and can leave an empty index (seen in tests/drills/test_load_drill.py). Waiting, not
    refusing: the second sync then runs on what the first left (a cursor, a fresh index).
    The lease is renewed while the sync runs and lapses if the process dies.
    """
    with get_client(sync_client=True) as client:
        turn = MailboxTurn(
            PrefectLimits(lambda: client),
            mailbox_limit(mailbox_id),
            settings.mailbox_wait_seconds,
            settings.full_sync_lease_seconds,
            book=run_leases(settings),
        )
        turn.__enter__()  # PrefectUnavailableError: transient, the sync task retries it
        try:
            yield turn
        finally:
            turn.__exit__(None, None, None)


class RoundTurns:
    """The mailbox turns a refresh round holds: one lease per batch of a job's mailboxes
    (refresh.batches), given back when the batch is done (`release`) or the round is.

    Only for mailboxes expected to sync quickly (those with a cursor): a turn held for a
    batch is held until its slowest mailbox is done, so a first sync, which builds the whole
    index, takes its own turn. When any mailbox of the batch is busy, or Prefect cannot be
    asked, `hold` says False and each mailbox waits for its own turn as any sync does.
    """

    def __init__(
        self, limits: PrefectLimits, lease_seconds: float, book: RunLeases | None = None
    ) -> None:
        self._limits, self._lease_seconds, self._book = limits, lease_seconds, book
        self._held: dict[str, MailboxTurns] = {}

    def hold(self, key: str, mailbox_ids: list[str]) -> bool:
        turns = MailboxTurns(
            self._limits,
            [mailbox_limit(m) for m in mailbox_ids],
            self._lease_seconds,
            book=self._book,
        )
        try:
            turns.__enter__()
        except PrefectUnavailableError as exc:
            log.warning("%s: no turns taken at once (%s); one by one instead", key, exc)
            return False
        if turns.held:
            self._held[key] = turns
            with _held_lock:
                _held_turns[key] = turns
        return turns.held

    def release(self, key: str) -> None:
        turns = self._held.pop(key, None)
        if turns is not None:
            with _held_lock:
                _held_turns.pop(key, None)
            turns.__exit__(None, None, None)

    def release_all(self) -> None:
        for key in list(self._held):
            self.release(key)


# The turns the refresh rounds of this process hold, by batch key: a batch's task (a thread of
# the round's flow run) finds its round's lease here, to write behind its fence.
_held_turns: dict[str, MailboxTurns] = {}
_held_lock = threading.Lock()


def held_fence(key: str) -> Fence | None:
    """The fence of the turns held under `key` (open while their lease is), or None."""
    with _held_lock:
        turns = _held_turns.get(key)
    if turns is None:
        return None
    return lambda: not turns.lapsed


@contextmanager
def round_turns(settings: Settings | None = None) -> Iterator[RoundTurns]:
    """RoundTurns on one Prefect client of this flow run; whatever is still held at the end
    is given back."""
    settings = settings or get_settings()
    with get_client(sync_client=True) as client:
        turns = RoundTurns(
            PrefectLimits(lambda: client), settings.full_sync_lease_seconds, run_leases(settings)
        )
        try:
            yield turns
        finally:
            turns.release_all()


def close_job(end: JobEnd, settings: Settings | None = None) -> None:
    close_jobs([end], settings)


def close_jobs(ends: list[JobEnd], settings: Settings | None = None) -> None:
    """Record the end of several jobs in one transaction (a refresh round closes many)."""
    settings = settings or get_settings()
    with session_scope(settings.resolved_database_url) as session:
        for end in ends:
            job = session.get(SyncJob, end.job_id)
            if job is None:
                raise JobNotFoundError(f"sync job {end.job_id} does not exist")
            ended = jobstore.mark_finished(
                session,
                job,
                counts=end.counts(),
                mailboxes=end.mailbox_entries(),
                error_code=end.error.code if end.error else None,
                error_message=end.error.message if end.error else None,
            )
            if ended:
                mailboxes.record_attempts(session, end.job_id, attempts(end))


def attempts(end: JobEnd) -> list[mailboxes.Attempt]:
    """What each mailbox of the ended job came to, for its own state (GET /v1/mailboxes)."""
    done = [mailboxes.Attempt(r.mailbox_id) for r in end.results]
    failed = [
        mailboxes.Attempt(f.mailbox_id, mailboxes.MailboxError(f.error.code, f.error.message))
        for f in end.failures
    ]
    return done + failed


@contextmanager
def full_sync_slot(job: JobRef, settings: Settings | None = None) -> Iterator[None]:
    """Hold the job's full-sync slot on the Prefect API this process talks to."""
    settings = settings or get_settings()
    with (
        get_client(sync_client=True) as client,
        FullSyncSlot(
            PrefectLimits(lambda: client),
            settings.resolved_database_url,
            job.job_id,
            job.workspace_id,
            list(job.providers),
            job.lease_id,
            settings.full_sync_lease_seconds,
        ),
    ):
        yield


def run_leases(settings: Settings) -> RunLeases | None:
    """Where this flow run records the turns it takes (none outside a flow run)."""
    flow_run_id = current_run.get_id()
    return RunLeases(settings.resolved_database_url, flow_run_id) if flow_run_id else None


def release_leases_hook(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """The flows' on_crashed / on_cancellation hook: release_run_lease for the run."""
    release_run_lease(str(flow_run.id))


def release_run_lease(flow_run_id: str, settings: Settings | None = None) -> None:
    """For runs that end without reaching their own cleanup (crashed, cancelled): the job's
    full-sync slot and the mailbox turns the run recorded (leases.RunLeases)."""
    settings = settings or get_settings()
    with session_scope(settings.resolved_database_url) as session:
        held = session.exec(select(RunLease).where(RunLease.flow_run_id == flow_run_id)).all()
        lease_ids = [lease.lease_id for lease in held]
        session.exec(delete(RunLease).where(col(RunLease.flow_run_id) == flow_run_id))  # type: ignore[call-overload]
        job = session.exec(select(SyncJob).where(SyncJob.flow_run_id == flow_run_id)).first()
        if job is not None and job.lease_id:
            lease_ids.append(job.lease_id)
            job.lease_id = None
            session.add(job)
    if not lease_ids:
        return
    # When Prefect cannot be told, a lease still expires within one lease time.
    with get_client(sync_client=True) as client:
        limits = PrefectLimits(lambda: client)
        for lease_id in lease_ids:
            with suppress(PrefectUnavailableError):
                limits.release(lease_id)


def reconcile_jobs(settings: Settings | None = None) -> list[tuple[str, str]]:
    """Every open job brought in line with its flow run (jobs.Orchestrator.reconcile_open_jobs);
    nothing when Prefect cannot be read now (the next round tries again)."""
    settings = settings or get_settings()
    orchestrator = Orchestrator(settings.resolved_prefect_api_url, settings)
    try:
        with session_scope(settings.resolved_database_url) as session:
            return orchestrator.reconcile_open_jobs(session)
    except PrefectUnavailableError as exc:
        log.warning("open jobs not reconciled: %s", exc)
        return []
    finally:
        orchestrator.close()
