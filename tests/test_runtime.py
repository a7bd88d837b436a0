"""What a flow run may do with the job it was created for."""

from __future__ import annotations

import pytest

from mailsync import jobstore, runtime
from mailsync.db import session_scope
from mailsync.models import JobStatus, SyncJob
from mailsync.settings import Settings
from tests.api.conftest import make_tenant
from tests.conftest import FakeProviders


def test_a_run_for_an_ended_job_does_not_reopen_it(
    settings: Settings, fakes: FakeProviders
) -> None:
    """A flow run whose job already ended (the API failed it after giving up on Prefect, or a
    UI retry of an ended run) refuses to start: the job keeps its outcome and is not synced
    again without its slot."""
    tenant = make_tenant(settings, fakes, providers=("gmail",))
    url = settings.resolved_database_url
    with session_scope(url) as session:
        job = jobstore.new_job(session, tenant.workspace_id, "full", "gmail")
        jobstore.mark_failed(session, job, "orchestrator_unavailable", "Prefect did not answer")
        job_id = job.id
    with pytest.raises(runtime.JobEndedError, match="already ended"):
        runtime.open_job(job_id, None, None, "full", "run-1", settings=settings)
    with session_scope(url) as session:
        ended = session.get(SyncJob, job_id)
        assert ended is not None and ended.status == JobStatus.failed.value
        assert ended.error_code == "orchestrator_unavailable" and ended.flow_run_id is None
