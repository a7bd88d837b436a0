"""How often a job's GET reads its flow run from Prefect (Orchestrator.refresh)."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import pytest
from prefect.states import Cancelled, Scheduled
from sqlmodel import Session, col, update

from mailsync.core.jobs import store as jobstore
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import JobStatus, SyncJob, utcnow
from mailsync.orchestration.orchestrator import SYNC_DEPLOYMENT, Orchestrator
from tests.support.api import make_tenant
from tests.support.stack import FakeProviders, PrefectStack


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.integration
@pytest.mark.only_database("sqlite")  # the reads are Prefect's; the row is the same on both
def test_a_polled_job_reads_its_flow_run_once_per_interval(
    prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """A client polling a job as fast as it likes costs Prefect one flow-run read per job per
    `flow_run_read_interval_seconds`: a run cancelled in Prefect is reported from the first
    read after the interval, and not before (the row answers in between)."""
    settings = prefect_stack.settings.model_copy(update={"flow_run_read_interval_seconds": 1.0})
    tenant = make_tenant(settings, fakes, providers=("gmail",))
    url = settings.resolved_database_url
    clock = Monotonic()
    orchestrator = Orchestrator(prefect_stack.api_url, settings, monotonic=clock)
    with prefect_stack.client() as prefect:
        deployment = prefect.read_deployment_by_name(SYNC_DEPLOYMENT)
        # Scheduled far ahead: no worker picks it up while the test looks at it.
        run = prefect.create_flow_run_from_deployment(
            deployment.id,
            parameters={"workspace": tenant.workspace_id},
            state=Scheduled(scheduled_time=utcnow() + timedelta(days=1)),
        )
        with session_scope(url) as session:
            job = jobstore.new_job(session, tenant.workspace_id, "incremental", "gmail")
            job_id = job.id
            session.flush()
            session.exec(  # type: ignore[call-overload]
                update(SyncJob).where(col(SyncJob.id) == job_id).values(flow_run_id=str(run.id))
            )

        def status() -> str:
            with Session(get_engine(url)) as session:
                row = session.get(SyncJob, job_id)
                assert row is not None
                refreshed = orchestrator.refresh(session, row)
                session.commit()
                return refreshed.status

        try:
            assert status() == JobStatus.queued.value  # read: Scheduled
            prefect.set_flow_run_state(UUID(str(run.id)), Cancelled(), force=True)
            clock.now += 0.5
            assert status() == JobStatus.queued.value  # within the interval: not read
            clock.now += 0.5
            assert status() == JobStatus.failed.value  # read again: Cancelled
            with Session(get_engine(url)) as session:
                row = session.get(SyncJob, job_id)
                assert row is not None and row.error_code == "job_cancelled"
        finally:
            orchestrator.close()
            prefect.delete_flow_run(run.id)
