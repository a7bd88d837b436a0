"""The facade over Prefect: turns sync requests into flow runs and flow-run states into job status.

The API and the CLI go through here and nothing else talks to Prefect on their behalf.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from sqlmodel import Session, col, update

from mailsync import jobstore
from mailsync.limits import PrefectLimits
from mailsync.models import JobStatus, SyncJob

log = logging.getLogger(__name__)

SYNC_DEPLOYMENT = "sync-mailbox/sync"

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

    def __init__(self, api_url: str, deployment: str = SYNC_DEPLOYMENT) -> None:
        self.api_url = api_url
        self.deployment = deployment
        self._client: SyncPrefectClient | None = None
        self._deployment_id: UUID | None = None
        self._lock = threading.Lock()
        self.limits = PrefectLimits(lambda: self.client)

    @property
    def client(self) -> SyncPrefectClient:
        with self._lock:
            if self._client is None:
                client = SyncPrefectClient(self.api_url)
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
        """Create the flow run for a recorded job; its name is the job id."""
        try:
            run = self.client.create_flow_run_from_deployment(
                self._deployment(),
                parameters=flow_parameters(job),
                name=job.id,
                tags=job_tags(job.workspace_id, job.providers, job.mode),
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
    ) -> SyncJob:
        """Record a job and start its flow run.

        Raises jobstore.NoMailboxError when nothing matches, OrchestratorUnavailableError
        (with the job recorded as failed) when Prefect cannot take the run.
        """
        job = jobstore.new_job(session, workspace_id, mode, provider, trigger=trigger)
        session.commit()  # the flow run reads the job, so it must exist before the run does
        try:
            flow_run_id = self.submit(job)
        except OrchestratorUnavailableError as exc:
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

    def refresh(self, session: Session, job: SyncJob) -> SyncJob:
        """Bring a non-terminal job up to date with its flow run's state."""
        if JobStatus(job.status).terminal or not job.flow_run_id:
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
        return job

    def healthy(self) -> bool:
        try:
            return self.client.api_healthcheck() is None
        except Exception:
            return False
