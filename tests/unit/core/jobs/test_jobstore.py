"""Job transitions as compare-and-set updates: a stale copy of a job never rewrites it."""

from __future__ import annotations

from sqlmodel import Session, select

from mailsync.core.jobs import store as jobstore
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import JobStatus, SyncJob, WebhookEvent, as_utc
from tests.support.receiver import new_workspace


def _queued_job(database_url: str) -> str:
    workspace_id = new_workspace(database_url)
    with session_scope(database_url) as session:
        job = SyncJob(workspace_id=workspace_id, mode="incremental", providers=["gmail"])
        session.add(job)
        session.flush()
        return job.id


def _stored(database_url: str, job_id: str) -> SyncJob:
    with Session(get_engine(database_url)) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        return job


def _events(database_url: str, job_id: str) -> list[str]:
    with Session(get_engine(database_url)) as session:
        return list(
            session.exec(select(WebhookEvent.type).where(WebhookEvent.subject_id == job_id))
        )


def _close(session: Session, job: SyncJob, error_code: str | None = None) -> bool:
    return jobstore.mark_finished(
        session,
        job,
        counts={"messages_added": 1},
        mailboxes=[],
        error_code=error_code,
        error_message="boom" if error_code else None,
    )


def test_a_stale_read_never_reopens_a_job_the_flow_closed(database_url: str) -> None:
    """A GET that read the job as queued, then learnt from Prefect that the run is RUNNING,
    must not write `running` over the `completed` the flow committed meanwhile (the job
    would stay running for ever)."""
    job_id = _queued_job(database_url)
    with session_scope(database_url) as stale_session:
        stale = stale_session.get(SyncJob, job_id)
        assert stale is not None and stale.status == JobStatus.queued
        with session_scope(database_url) as flow_session:  # the flow, during the GET's read
            job = flow_session.get(SyncJob, job_id)
            assert job is not None
            jobstore.mark_running(flow_session, job, "run-1")
            assert _close(flow_session, job)
        jobstore.mark_running(stale_session, stale, None)
        assert stale.status == JobStatus.completed  # what is stored, not the stale copy
    stored = _stored(database_url, job_id)
    assert (stored.status, stored.error_code) == (JobStatus.completed, None)
    assert stored.flow_run_id == "run-1"


def test_a_job_ends_once_and_is_announced_once(database_url: str) -> None:
    """A GET that saw the run FAILED after the flow recorded `completed` keeps the flow's
    outcome (no `job_failed` over it), and the job's end is announced once: the first
    terminal transition wins, in the UPDATE itself."""
    job_id = _queued_job(database_url)
    with session_scope(database_url) as stale_session:
        stale = stale_session.get(SyncJob, job_id)
        assert stale is not None
        with session_scope(database_url) as flow_session:
            job = flow_session.get(SyncJob, job_id)
            assert job is not None
            assert _close(flow_session, job)
        assert not jobstore.mark_failed(stale_session, stale, "job_failed", "flow run failed")
        assert stale.status == JobStatus.completed and stale.error_code is None
    stored = _stored(database_url, job_id)
    assert (stored.status, stored.error_code, stored.counts) == (
        JobStatus.completed,
        None,
        {"messages_added": 1},
    )
    assert _events(database_url, job_id) == ["email.sync.completed"]


def test_a_failure_recorded_first_is_not_replaced_by_a_late_completion(database_url: str) -> None:
    """The other order: the API failed the job (its run crashed), then a late close of the
    flow says completed: the job stays failed with its code, one event."""
    job_id = _queued_job(database_url)
    with session_scope(database_url) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        assert jobstore.mark_failed(session, job, "job_crashed", "flow run crashed")
    with session_scope(database_url) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        assert not _close(session, job)
    stored = _stored(database_url, job_id)
    assert (stored.status, stored.error_code) == (JobStatus.failed, "job_crashed")
    assert _events(database_url, job_id) == ["email.sync.failed"]


def test_a_running_job_gets_its_run_once(database_url: str) -> None:
    """`mark_running` records the first flow run's id and keeps it; a job already running
    stays as it is (its started_at is not moved)."""
    job_id = _queued_job(database_url)
    with session_scope(database_url) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        jobstore.mark_running(session, job, "run-1")
        started = as_utc(job.started_at)
        assert job.status == JobStatus.running and started is not None
    with session_scope(database_url) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        jobstore.mark_running(session, job, "run-2")
    stored = _stored(database_url, job_id)
    assert (stored.status, stored.flow_run_id) == (JobStatus.running, "run-1")
    assert as_utc(stored.started_at) == started
