"""The facade over Prefect: turns sync requests into flow runs and flow-run states into job status.

The API and the CLI go through here and nothing else talks to Prefect on their behalf.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from sqlmodel import Session, col, select, update

from mailsync.core.jobs import reconcile
from mailsync.core.jobs import store as jobstore
from mailsync.core.rules.admission import Admission, Clock
from mailsync.db.tables import JobStatus, SyncJob, SyncMode, as_utc, utcnow
from mailsync.errors import PrefectUnavailableError
from mailsync.orchestration import runs
from mailsync.orchestration.boundary import prefect_calls
from mailsync.orchestration.deadline import DeadlineTransport
from mailsync.orchestration.limits import PrefectLimits
from mailsync.settings import Settings, get_settings

log = logging.getLogger(__name__)

SYNC_DEPLOYMENT = "sync-mailbox/sync"

# How many jobs' last flow-run read times an API process remembers (Orchestrator._read_due).
READ_TIMES_KEPT = 10_000

_QUEUED = {StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED}
_RUNNING = {StateType.RUNNING, StateType.CANCELLING}


def _run_state(run: FlowRun) -> reconcile.RunState:
    state = run.state
    return reconcile.RunState(
        id=str(run.id),
        state=state.type.value if state is not None else "SCHEDULED",
        name=state.name if state is not None else None,
        message=state.message if state is not None else None,
        ended_at=as_utc(run.end_time) if run.end_time else None,
    )


def job_tags(workspace_id: str, providers: list[str], mode: str) -> list[str]:
    return [f"workspace:{workspace_id}", *(f"provider:{p}" for p in providers), f"mode:{mode}"]


def flow_parameters(job: SyncJob) -> dict[str, Any]:
    """What the flow run carries: identifiers only, never credentials."""
    return {
        "job_id": job.id,
        "workspace": job.workspace_id,
        "providers": list(job.providers),
        "mode": job.mode,
    }


class Orchestrator:
    """A long-lived Prefect client for one process."""

    def __init__(
        self,
        api_url: str,
        settings: Settings | None = None,
        *,
        deployment: str = SYNC_DEPLOYMENT,
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url
        self._transport = transport  # how Prefect is reached (tests inject failures here)
        self.deployment = deployment
        self._client: SyncPrefectClient | None = None
        self._deployment_id: UUID | None = None
        self._lock = threading.Lock()
        self.limits = PrefectLimits(lambda: self.client)
        self.settings = settings or get_settings()
        self.admission = Admission(self.limits, self.settings, clock)
        self._clock = clock
        self._monotonic = monotonic
        # job id -> when its flow run was last read; oldest first, bounded.
        self._read_at: OrderedDict[str, float] = OrderedDict()

    @property
    def client(self) -> SyncPrefectClient:
        with self._lock:
            if self._client is None:
                # Our own transport: Prefect's default retries a refused connection with
                # backoff (~1.5 s), and its client retries 5 more times; the API would rather
                # answer 503 soon and let its caller retry. Each call gets a time budget
                # across those retries (deadline.py).
                budget = self.settings.prefect_call_budget_seconds
                transport = DeadlineTransport(
                    self._transport or httpx.HTTPTransport(retries=1), budget
                )
                # A client built from a URL sends no auth string of its own accord.
                client = SyncPrefectClient(
                    self.api_url,
                    auth_string=self.settings.prefect_client_auth_string(),
                    httpx_settings={"transport": transport, "timeout": httpx.Timeout(budget)},
                )
                client.__enter__()
                self._client = client
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.__exit__(None, None, None)
                self._client = None

    def _deployment(self) -> UUID:
        if self._deployment_id is None:
            self._deployment_id = self.client.read_deployment_by_name(self.deployment).id
        return self._deployment_id

    def submit(self, job: SyncJob) -> str:
        """Create the flow run for a recorded job; its name and Prefect idempotency key are
        the job id: a retried submission of the job gets its run, and no other job can (a key
        derived from the client's Idempotency-Key handed a retried trigger's new job the run
        of the first, failed one)."""
        with prefect_calls(missing=f"the {self.deployment} deployment is not registered"):
            deployment = self._deployment()
        try:
            run = runs.start_run(
                self.client,
                deployment,
                key=job.id,
                parameters=flow_parameters(job),
                name=job.id,
                tags=job_tags(job.workspace_id, job.providers, job.mode),
            )
        except PrefectUnavailableError as exc:
            if isinstance(exc.__cause__, ObjectNotFound):
                self._deployment_id = None  # deleted since: read it again next time
            raise
        if (run.parameters or {}).get("job_id") != job.id:
            raise PrefectUnavailableError(f"Prefect answered with another job's run {run.id}")
        return str(run.id)

    def trigger(
        self,
        session: Session,
        workspace_id: str,
        mode: str,
        provider: str | None,
        *,
        trigger: str = "api",
        job_id: str | None = None,
    ) -> SyncJob:
        """Apply the sync rules, record the job (as `job_id`, when the caller named it
        already) and start its flow run.

        Raises NoMailboxError (nothing to sync), SyncInProgressError (409),
        RateLimitedError (429; only requests from the API count against the quota), and
        PrefectUnavailableError when Prefect cannot take the run (nothing is held then).
        """
        job = jobstore.build_job(session, workspace_id, mode, provider, trigger=trigger)
        if job_id is not None:
            job.id = job_id
        leases: list[str] = []
        try:
            if mode == SyncMode.full:
                job.lease_id = self.admission.take_full_sync(
                    session, workspace_id, job.providers, self.refresh
                )
                leases.append(job.lease_id)
            else:
                self.admission.check_no_full_sync(
                    session, workspace_id, job.providers, self.refresh
                )
            if trigger == "api":
                job.quota_lease_id, job.quota_expires_at = self.admission.take_quota(
                    session, workspace_id
                )
                leases.append(job.quota_lease_id)
            session.add(job)
            session.commit()  # the flow run reads the job, so it must exist before the run does
        except BaseException:
            session.rollback()
            self._release(leases)
            raise
        try:
            flow_run_id = self.submit(job)
        except PrefectUnavailableError as exc:
            self._release(leases)
            job.lease_id = job.quota_lease_id = None
            jobstore.mark_failed(session, job, "orchestrator_unavailable", str(exc))
            session.commit()
            raise
        # A targeted update: the flow may already have marked the job running.
        session.exec(  # type: ignore[call-overload]
            update(SyncJob).where(col(SyncJob.id) == job.id).values(flow_run_id=flow_run_id)
        )
        session.commit()
        job.flow_run_id = flow_run_id
        return job

    def _release(self, leases: list[str]) -> None:
        for lease in leases:
            try:
                self.limits.release(lease)
            except PrefectUnavailableError:
                log.warning("could not release lease %s; it expires by itself", lease)

    def refresh(self, session: Session, job: SyncJob) -> SyncJob:
        """Bring a non-terminal job up to date with its flow run's state."""
        if JobStatus(job.status).terminal or not job.flow_run_id:
            return job
        if not self._read_due(job.id):
            return job
        try:
            run = self.client.read_flow_run(UUID(job.flow_run_id))
        except (httpx.HTTPError, PrefectHTTPStatusError, ObjectNotFound, RuntimeError):
            log.warning("could not read flow run %s; reporting stored status", job.flow_run_id)
            return job
        state = run.state
        if state is None or state.type in _QUEUED:
            return job
        if state.type in _RUNNING:
            # A push job is queued until it holds its mailbox's turn (push_jobs.py).
            if job.status == JobStatus.queued and job.trigger != "push":
                jobstore.mark_running(session, job, None)
            return job
        if state.type == StateType.COMPLETED:
            # The flow writes its own terminal state first; reaching here means it was not
            # recorded, which only a half-finished run can cause.
            return job
        failure = reconcile.run_failure(_run_state(run)) or ("job_failed", "flow run failed")
        self.fail_job(session, job, *failure)
        return job

    def fail_job(self, session: Session, job: SyncJob, code: str, message: str) -> bool:
        """Fail an open job from outside its run and give back its full-sync slot, which the
        run can no longer release; False when the job had already ended."""
        if not jobstore.mark_failed(session, job, code, message):
            return False
        if job.lease_id:
            self._release([job.lease_id])
            job.lease_id = None
        return True

    def reconcile_open_jobs(
        self, session: Session, bounds: reconcile.Bounds | None = None, page: int = 200
    ) -> list[tuple[str, str]]:
        """Bring every open job in line with its flow run (core/jobs/reconcile.py): link a run
        created for it, fail it when its run failed, vanished, or never came. Returns what was
        done, as (job id, what). Raises PrefectUnavailableError when Prefect cannot be
        read: nothing is changed then."""
        open_jobs = list(
            session.exec(
                select(SyncJob)
                .where(col(SyncJob.status).in_([JobStatus.queued.value, JobStatus.running.value]))
                .order_by(col(SyncJob.queued_at))
            )
        )
        with prefect_calls():
            by_id = self._runs(
                [j.flow_run_id for j in open_jobs if j.flow_run_id], page, by_name=False
            )
            by_name = self._runs([j.id for j in open_jobs if not j.flow_run_id], page, by_name=True)
        now, done = self._clock(), []
        for job in open_jobs:
            run = by_id.get(job.flow_run_id) if job.flow_run_id else by_name.get(job.id)
            verdict = reconcile.verdict(
                flow_run_id=job.flow_run_id,
                queued_at=as_utc(job.queued_at) or now,
                run=run,
                now=now,
                bounds=bounds or reconcile.Bounds(),
            )
            if verdict.link:
                jobstore.link_run(session, job, verdict.link)
                done.append((job.id, f"linked to flow run {verdict.link}"))
            if verdict.fail:
                self.fail_job(session, job, *verdict.fail)
                done.append((job.id, f"failed: {verdict.fail[0]}: {verdict.fail[1]}"))
            elif verdict.running and job.status == JobStatus.queued and job.trigger != "push":
                jobstore.mark_running(session, job, None)
        session.commit()
        return done

    def _runs(self, keys: list[str], page: int, *, by_name: bool) -> dict[str, reconcile.RunState]:
        """The flow runs with these ids (or names), by id (or name); absent ones are gone."""
        found: dict[str, reconcile.RunState] = {}
        for start in range(0, len(keys), page):
            chunk = keys[start : start + page]
            flow_runs = FlowRunFilter(
                name=FlowRunFilterName(any_=chunk) if by_name else None,
                id=None if by_name else FlowRunFilterId(any_=[UUID(k) for k in chunk]),
            )
            for run in self.client.read_flow_runs(flow_run_filter=flow_runs, limit=page):
                found[run.name if by_name else str(run.id)] = _run_state(run)
        return found

    def _read_due(self, job_id: str) -> bool:
        """Whether this job's flow run may be read again: a client polling every few
        milliseconds costs Prefect one read per job per interval, not one per GET."""
        now = self._monotonic()
        with self._lock:
            last = self._read_at.get(job_id)
            if last is not None and now - last < self.settings.flow_run_read_interval_seconds:
                return False
            self._read_at[job_id] = now
            self._read_at.move_to_end(job_id)
            while len(self._read_at) > READ_TIMES_KEPT:
                self._read_at.popitem(last=False)
            return True

    def start_delivery_run(self, key: str) -> bool:
        """A webhook delivery run now, on this process's client; never raises."""
        return runs.start_delivery_run(key, client=self.client)

    def healthy(self) -> bool:
        try:
            return self.client.api_healthcheck() is None
        except Exception:
            return False
