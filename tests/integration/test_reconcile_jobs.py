"""Open jobs reconciled with their flow runs on a real Prefect stack: none stays open for ever."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import SyncPrefectClient
from prefect.states import Completed, Scheduled
from sqlmodel import Session
from typer.testing import CliRunner

from mailsync.api.app import create_app
from mailsync.cli import app as cli
from mailsync.core.jobs import store as jobstore
from mailsync.core.jobs.reconcile import Bounds
from mailsync.core.rules.admission import full_sync_limit
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import JobStatus, SyncJob, utcnow
from mailsync.orchestration.limits import PrefectLimits
from mailsync.orchestration.orchestrator import SYNC_DEPLOYMENT, Orchestrator, job_tags
from mailsync.settings import Settings, get_settings
from tests.support.api import make_tenant
from tests.support.stack import ENCRYPTION_KEY, FakeProviders, PrefectStack
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.only_database("sqlite")]
NO_GRACE = Bounds(without_run=timedelta(0), after_run_end=timedelta(0))


def _job(settings: Settings, workspace_id: str, mode: str = "incremental", **fields: Any) -> str:
    """A job as the API records it before creating its run."""
    with session_scope(settings.resolved_database_url) as session:
        job = jobstore.new_job(session, workspace_id, mode, "gmail")
        for name, value in fields.items():
            setattr(job, name, value)
        session.add(job)
        return job.id


def _take_full_sync_slot(
    prefect: SyncPrefectClient, workspace_id: str
) -> tuple[PrefectLimits, str]:
    """The workspace's Gmail full-sync slot, taken as the API takes it for a full job."""
    limits = PrefectLimits(lambda: prefect)
    lease = limits.take([full_sync_limit(workspace_id, "gmail")], 600)
    assert isinstance(lease, str)
    return limits, lease


def _stored(settings: Settings, job_id: str) -> SyncJob:
    with Session(get_engine(settings.resolved_database_url)) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        return job


def _reconcile(stack: PrefectStack, bounds: Bounds = NO_GRACE) -> list[tuple[str, str]]:
    orchestrator = Orchestrator(stack.api_url, stack.settings)
    try:
        with session_scope(stack.settings.resolved_database_url) as session:
            return orchestrator.reconcile_open_jobs(session, bounds)
    finally:
        orchestrator.close()


def test_a_full_job_left_without_a_run_is_failed_by_the_next_round_and_frees_its_slot(
    prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """The API recorded a full job and took its slot, then died before creating its run:
    the provider answered 409 for ever. The next refresh round fails the job
    `orchestrator_unavailable` and gives the slot back, so a new full sync is accepted."""
    settings = prefect_stack.settings
    tenant = make_tenant(settings, fakes, providers=("gmail",))
    with prefect_stack.client() as prefect:
        limits, lease = _take_full_sync_slot(prefect, tenant.workspace_id)
        stuck = _job(
            settings,
            tenant.workspace_id,
            "full",
            lease_id=lease,
            queued_at=utcnow() - timedelta(minutes=10),
        )
        with TestClient(create_app(settings), raise_server_exceptions=False) as api:
            body = {"mode": "full", "provider": "gmail"}
            refused = api.post("/v1/email/sync", headers=tenant.auth(), json=body)
            assert refused.status_code == 409, refused.text
            deployment = prefect.read_deployment_by_name("refresh-mailboxes/refresh")
            round_ = prefect.create_flow_run_from_deployment(
                deployment.id, parameters={"workspaces": [tenant.workspace_id]}
            )
            ended = eventually(
                lambda: (r := prefect.read_flow_run(round_.id)).state.is_final() and r,  # type: ignore[union-attr]
                "the refresh round",
                timeout=120,
            )
            assert ended.state.is_completed()
            job = _stored(settings, stuck)
            assert (job.status, job.error_code) == (JobStatus.failed, "orchestrator_unavailable")
            assert job.lease_id is None
            name = full_sync_limit(tenant.workspace_id, "gmail").name
            assert limits.active_slots(name) == 0
            accepted = api.post("/v1/email/sync", headers=tenant.auth(), json=body)
            assert accepted.status_code == 202, accepted.text


def test_runs_deleted_unrecorded_or_completed_without_closing_their_job(
    prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """A job whose run was deleted in Prefect is failed `job_lost`; a job whose run exists
    (named after it) but was never recorded on it is linked to it and left open; a job whose
    run completed without recording the job's end is failed `job_lost`. Jobs that end are
    not touched again by a second pass."""
    settings = prefect_stack.settings
    tenant = make_tenant(settings, fakes, providers=("gmail",))
    future = Scheduled(scheduled_time=utcnow() + timedelta(hours=1))  # never picked up here
    with prefect_stack.client() as prefect:
        deployment = prefect.read_deployment_by_name(SYNC_DEPLOYMENT)

        def run_for(job_id: str) -> str:
            run = prefect.create_flow_run_from_deployment(
                deployment.id,
                parameters={"job_id": job_id},
                name=job_id,
                tags=job_tags(tenant.workspace_id, ["gmail"], "incremental"),
                state=future,
            )
            return str(run.id)

        deleted = _job(settings, tenant.workspace_id)
        deleted_run = run_for(deleted)
        _set_run(settings, deleted, deleted_run)
        prefect.delete_flow_run(UUID(deleted_run))
        unrecorded = _job(settings, tenant.workspace_id)
        unrecorded_run = run_for(unrecorded)
        completed = _job(settings, tenant.workspace_id)
        completed_run = run_for(completed)
        _set_run(settings, completed, completed_run)
        prefect.set_flow_run_state(UUID(completed_run), Completed(), force=True)
        try:
            done = dict(_reconcile(prefect_stack))
            again = dict(_reconcile(prefect_stack))
        finally:
            prefect.delete_flow_run(UUID(unrecorded_run))
            prefect.delete_flow_run(UUID(completed_run))
    assert _stored(settings, deleted).error_code == "job_lost"
    assert "no longer exists" in (_stored(settings, deleted).error_message or "")
    linked = _stored(settings, unrecorded)
    assert (linked.status, linked.flow_run_id) == (JobStatus.queued, unrecorded_run)
    lost = _stored(settings, completed)
    assert (lost.status, lost.error_code) == (JobStatus.failed, "job_lost")
    assert done[deleted].startswith("failed: job_lost") and done[completed].startswith("failed")
    assert done[unrecorded] == f"linked to flow run {unrecorded_run}"
    assert deleted not in again and completed not in again and unrecorded not in again


def _set_run(settings: Settings, job_id: str, flow_run_id: str) -> None:
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        jobstore.link_run(session, job, flow_run_id)


def test_an_administrator_fails_a_stuck_job_and_frees_its_slot(
    prefect_stack: PrefectStack, fakes: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mailsync job fail <id> --reason ...` fails an open job with the reason and gives its
    full-sync slot back; an ended job is refused with exit code 1 and left as it is."""
    settings = prefect_stack.settings
    tenant = make_tenant(settings, fakes, providers=("gmail",))
    with prefect_stack.client() as prefect:
        limits, lease = _take_full_sync_slot(prefect, tenant.workspace_id)
        job_id = _job(settings, tenant.workspace_id, "full", lease_id=lease)
        for name, value in {
            "MAILSYNC_DATA_DIR": str(settings.data_dir),
            "MAILSYNC_DATABASE_URL": settings.resolved_database_url,
            "MAILSYNC_ENCRYPTION_KEY": ENCRYPTION_KEY,
            "MAILSYNC_PREFECT_API_URL": prefect_stack.api_url,
            "MAILSYNC_PREFECT_AUTH_STRING": prefect_stack.auth_string,
        }.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        runner = CliRunner()
        try:
            result = runner.invoke(cli, ["job", "fail", job_id, "--reason", "stuck since Monday"])
            assert result.exit_code == 0, result.output
            again = runner.invoke(cli, ["job", "fail", job_id, "--reason", "twice"])
        finally:
            get_settings.cache_clear()
        assert again.exit_code == 1 and "already ended" in again.output
        assert limits.active_slots(full_sync_limit(tenant.workspace_id, "gmail").name) == 0
    job = _stored(settings, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "job_failed")
    assert job.error_message == "failed by an administrator: stuck since Monday"
