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
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from sqlmodel import Session, col, update

from mailsync import jobstore
from mailsync.admission import Admission, Clock
from mailsync.deadline import DeadlineTransport
from mailsync.limits import LimitsUnavailableError, PrefectLimits
from mailsync.models import JobStatus, SyncJob, SyncMode, utcnow
from mailsync.settings import Settings, get_settings

log = logging.getLogger(__name__)

SYNC_DEPLOYMENT = "sync-mailbox/sync"

# How many jobs' last flow-run read times an API process remembers (Orchestrator._read_due).
READ_TIMES_KEPT = 10_000

_QUEUED = {StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED}
_RUNNING = {StateType.RUNNING, StateType.CANCELLING}


class OrchestratorUnavailableError(Exception):
    """Prefect could not be reached or refused the flow run."""


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
    ) -> None:
        self.api_url = api_url
        self.deployment = deployment
        self._client: SyncPrefectClient | None = None
        self._deployment_id: UUID | None = None
        self._lock = threading.Lock()
        self.limits = PrefectLimits(lambda: self.client)
        self.settings = settings or get_settings()
        self.admission = Admission(self.limits, self.settings, clock)
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
                transport = DeadlineTransport(httpx.HTTPTransport(retries=1), budget)
                client = SyncPrefectClient(
                    self.api_url,
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

    def submit(self, job: SyncJob, idempotency_key: str | None = None) -> str:
        """Create the flow run for a recorded job; its name is the job id."""
        try:
            run = self.client.create_flow_run_from_deployment(
                self._deployment(),
                parameters=flow_parameters(job),
                name=job.id,
                tags=job_tags(job.workspace_id, job.providers, job.mode),
                idempotency_key=idempotency_key,
            )
        except ObjectNotFound as exc:
            self._deployment_id = None
            raise OrchestratorUnavailableError(
                f"the {self.deployment} deployment is not registered"
            ) from exc
        except (httpx.HTTPError, PrefectHTTPStatusError, RuntimeError) as exc:
            raise OrchestratorUnavailableError("the Prefect API could not be reached") from exc
        return str(run.id)

    def trigger(
        self,
        session: Session,
        workspace_id: str,
        mode: str,
        provider: str | None,
        *,
        trigger: str = "api",
        idempotency_key: str | None = None,
    ) -> SyncJob:
        """Apply the sync rules, record the job and start its flow run.

        Raises jobstore.NoMailboxError (nothing to sync), SyncInProgressError (409),
        RateLimitedError (429; only requests from the API count against the quota), and
        OrchestratorUnavailableError when Prefect cannot take the run (nothing is held then).
        """
        job = jobstore.build_job(session, workspace_id, mode, provider, trigger=trigger)
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
            flow_run_id = self.submit(job, idempotency_key)
        except OrchestratorUnavailableError as exc:
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
            except LimitsUnavailableError:
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
            if job.status == JobStatus.queued:
                jobstore.mark_running(session, job, None)
            return job
        if state.type == StateType.COMPLETED:
            # The flow writes its own terminal state first; reaching here means it was not
            # recorded, which only a half-finished run can cause.
            return job
        reason = {
            StateType.CANCELLED: "job_cancelled",
            StateType.CRASHED: "job_crashed",
            StateType.FAILED: "job_failed",
        }.get(state.type, "job_failed")
        message = f"flow run {(state.name or state.type.value).lower()}" + (
            f": {state.message}" if state.message else ""
        )
        jobstore.mark_failed(session, job, reason, message)
        if job.lease_id:  # the run cannot release its full-sync slot any more
            self._release([job.lease_id])
            job.lease_id = None
        return job

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

    def healthy(self) -> bool:
        try:
            return self.client.api_healthcheck() is None
        except Exception:
            return False
