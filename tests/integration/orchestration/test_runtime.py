"""What a flow run may do with the job it was created for."""

from __future__ import annotations

import secrets

import pytest
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from mailsync.core.jobs import store as jobstore
from mailsync.core.rules.admission import mailbox_limit
from mailsync.db import session_scope
from mailsync.db.tables import JobStatus, SyncJob
from mailsync.errors import JobEndedError, MailboxBusyError
from mailsync.orchestration import runtime
from mailsync.settings import Settings
from tests.support.api import make_tenant
from tests.support.stack import FakeProviders, PrefectStack


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
    with pytest.raises(JobEndedError, match="already ended"):
        runtime.open_job(job_id, None, None, "full", "run-1", settings=settings)
    with session_scope(url) as session:
        ended = session.get(SyncJob, job_id)
        assert ended is not None and ended.status == JobStatus.failed.value
        assert ended.error_code == "orchestrator_unavailable" and ended.flow_run_id is None


@pytest.mark.integration
@pytest.mark.only_database("sqlite")  # the turn is Prefect's
def test_a_mailbox_turn_creates_its_limit_and_excludes_a_second_turn(
    prefect_stack: PrefectStack,
) -> None:
    """A mailbox's first turn creates its Prefect limit (limit 1) and holds its one slot; a
    second turn meanwhile waits and gives up (MailboxBusyError); once the first ends, a new
    turn finds the existing limit and gets the slot."""
    mailbox_id = f"mbx_turn_{secrets.token_hex(4)}"
    name = mailbox_limit(mailbox_id).name
    settings = prefect_stack.settings.model_copy(update={"mailbox_wait_seconds": 1})
    with (
        temporary_settings(
            {
                PREFECT_API_URL: prefect_stack.api_url,
                PREFECT_API_AUTH_STRING: prefect_stack.auth_string,
            }
        ),
        prefect_stack.client() as client,
    ):
        with runtime.mailbox_turn(mailbox_id, settings):
            limit = client.read_global_concurrency_limit_by_name(name)
            assert (limit.limit, limit.active_slots) == (1, 1)
            with (
                pytest.raises(MailboxBusyError),
                runtime.mailbox_turn(mailbox_id, settings),
            ):
                pass
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
        with runtime.mailbox_turn(mailbox_id, settings):
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 1
