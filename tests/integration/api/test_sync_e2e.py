"""The on-demand sync end to end: API -> Prefect flow run on a real worker -> fakes -> index."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import partial
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import SyncPrefectClient
from sqlmodel import Session, select

from mailsync.api.app import create_app
from mailsync.core.sync import index
from mailsync.db import get_engine
from mailsync.db.tables import Mailbox, SyncJob
from tests.support.api import Tenant, make_tenant
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually, job_ended

pytestmark = pytest.mark.integration
URL = "/v1/email/sync"
JOB_ID = re.compile(r"^sync_[0-9A-HJKMNP-TV-Z]{26}$")
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def client(prefect_stack: PrefectStack) -> Iterator[TestClient]:
    with TestClient(create_app(prefect_stack.settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def tenant(prefect_stack: PrefectStack, fakes: FakeProviders) -> Tenant:
    return make_tenant(prefect_stack.settings, fakes)


def trigger(client: TestClient, tenant: Tenant, body: dict[str, Any] | None = None) -> str:
    response = client.post(URL, headers=tenant.auth(), json=body or {})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["data"]["job_id"]
    return job_id


def wait(client: TestClient, tenant: Tenant, job_id: str, timeout: float = 90) -> dict[str, Any]:
    """Poll until the job ends; returns its last view with the statuses seen on the way."""
    seen: list[str] = []

    def view() -> dict[str, Any]:
        response = client.get(f"{URL}/{job_id}", headers=tenant.auth(tenant.reader))
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        if not seen or seen[-1] != data["status"]:
            seen.append(data["status"])
        return data

    data = eventually(view, f"job {job_id} to end", timeout, until=job_ended)
    data["seen"] = seen
    return data


def indexed(stack: PrefectStack, workspace_id: str, provider: str) -> set[str]:
    with Session(get_engine(stack.settings.resolved_database_url)) as session:
        mailbox = session.exec(
            select(Mailbox).where(
                Mailbox.workspace_id == workspace_id, Mailbox.provider == provider
            )
        ).one()
        return index.message_ids(session, mailbox.id)


def test_trigger_runs_a_real_sync_of_both_mailboxes(
    client: TestClient, tenant: Tenant, fakes: FakeProviders, prefect_stack: PrefectStack
) -> None:
    """202 with exactly the documented shape; the job runs as a named flow run and ends
    completed with the index holding exactly the fakes' messages for both providers."""
    response = client.post(
        URL, headers={**tenant.auth(), "Content-Type": "application/json"}, content=b"{}"
    )
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"data"} and set(body["data"]) == {"job_id", "status", "mode", "queued_at"}
    data = body["data"]
    assert JOB_ID.match(data["job_id"]) and ISO_Z.match(data["queued_at"])
    assert (data["status"], data["mode"]) == ("queued", "incremental")

    final = wait(client, tenant, data["job_id"])
    assert final["status"] == "completed", final
    assert final["seen"][-1] == "completed" and set(final["seen"]) <= {
        "queued",
        "running",
        "completed",
    }
    assert sorted(final["providers"]) == ["gmail", "microsoft"]
    assert ISO_Z.match(final["started_at"]) and ISO_Z.match(final["finished_at"])
    assert final["error"] is None
    for mailbox in final["mailboxes"]:  # never synced before: the job says it ran a full sync
        assert (mailbox["performed_mode"], mailbox["reason"]) == ("full", "initial_sync")
    for provider, address in (
        ("gmail", tenant.gmail_address),
        ("microsoft", tenant.microsoft_address),
    ):
        expected = set(fakes.admin(provider).ids(address))
        assert indexed(prefect_stack, tenant.workspace_id, provider) == expected
    assert final["counts"]["messages_added"] == 80

    with prefect_stack.client() as prefect:
        with Session(get_engine(prefect_stack.settings.resolved_database_url)) as session:
            job = session.get(SyncJob, data["job_id"])
            assert job is not None and job.flow_run_id
        run = prefect.read_flow_run(UUID(job.flow_run_id))
    assert run.name == data["job_id"]
    assert f"workspace:{tenant.workspace_id}" in run.tags and "mode:incremental" in run.tags
    assert set(run.parameters) == {"job_id", "workspace", "providers", "mode"}
    assert tenant.writer not in str(run.parameters)


def test_incremental_fetches_exactly_the_new_messages_and_full_prunes_deleted(
    client: TestClient, tenant: Tenant, fakes: FakeProviders, prefect_stack: PrefectStack
) -> None:
    """After adds, an incremental sync fetches exactly those (per the fakes' request counts);
    after deletes, a full sync removes them from the index."""
    assert wait(client, tenant, trigger(client, tenant))["status"] == "completed"
    gmail_new = fakes.gmail.add_messages(tenant.gmail_address, 3)
    fakes.microsoft.add_messages(tenant.microsoft_address, 4)
    fakes.gmail.reset_stats()
    fakes.microsoft.reset_stats()
    final = wait(client, tenant, trigger(client, tenant))
    assert final["status"] == "completed", final
    assert final["counts"] == {"messages_added": 7, "messages_updated": 0, "messages_deleted": 0}
    assert {m["performed_mode"] for m in final["mailboxes"]} == {"incremental"}
    gmail_calls = fakes.gmail.stats()
    assert gmail_calls.get("messages.get") == 3 and not gmail_calls.get("messages.list")
    assert fakes.microsoft.stats().get("delta") == 2  # one page per folder, from the deltaLinks
    assert set(gmail_new) <= indexed(prefect_stack, tenant.workspace_id, "gmail")

    for pid in gmail_new[:2]:
        fakes.gmail.delete_message(tenant.gmail_address, pid)
    final = wait(client, tenant, trigger(client, tenant, {"mode": "full", "provider": "gmail"}))
    assert final["status"] == "completed" and final["providers"] == ["gmail"]
    assert final["counts"]["messages_deleted"] == 2
    assert indexed(prefect_stack, tenant.workspace_id, "gmail") == set(
        fakes.gmail.ids(tenant.gmail_address)
    )


def test_jobs_are_invisible_to_other_workspaces(
    client: TestClient, tenant: Tenant, fakes: FakeProviders, prefect_stack: PrefectStack
) -> None:
    """Another workspace's job id answers 404, exactly like an unknown id."""
    other = make_tenant(prefect_stack.settings, fakes, providers=("gmail",))
    job_id = trigger(client, tenant, {"provider": "gmail"})
    response = client.get(f"{URL}/{job_id}", headers=other.auth())
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    wait(client, tenant, job_id)


@pytest.mark.only_database("postgresql")  # retry policy is the flow's
def test_auth_failure_at_the_provider_fails_the_job_without_retrying(
    client: TestClient, tenant: Tenant, fakes: FakeProviders, prefect_stack: PrefectStack
) -> None:
    """Credentials revoked at the provider end the job failed with provider_auth_failed (once
    the stored access token is refused), and the error names no secret."""
    fakes.gmail.revoke(tenant.gmail_address)
    final = wait(client, tenant, trigger(client, tenant, {"provider": "gmail"}))
    assert final["status"] == "failed"
    assert final["error"]["code"] == "provider_auth_failed"
    assert tenant.writer not in str(final)


@pytest.mark.only_database("sqlite")  # the run path is Prefect's
def test_run_started_like_the_prefect_ui_becomes_a_job(
    client: TestClient, tenant: Tenant, prefect_stack: PrefectStack
) -> None:
    """A flow run created with workspace parameters only (as the Prefect UI's Run does)
    records its own job, renames the run to the job id, and is readable through the API."""
    with prefect_stack.client() as prefect:
        deployment = prefect.read_deployment_by_name("sync-mailbox/sync")
        run = prefect.create_flow_run_from_deployment(
            deployment.id,
            parameters={"workspace": tenant.workspace_id, "providers": ["microsoft"]},
        )
        run = eventually(
            lambda: prefect.read_flow_run(run.id),
            "the UI run named after its job",
            90,
            0.3,
            until=lambda found: (
                found.name.startswith("sync_")
                or (found.state is not None and found.state.is_final())
            ),
        )
    assert run.name.startswith("sync_"), run.name
    final = wait(client, tenant, run.name)
    assert final["status"] == "completed" and final["providers"] == ["microsoft"]


def _secret_values(document: dict[str, Any]) -> list[str]:
    return [
        v
        for k, v in document.items()
        if isinstance(v, str) and ("secret" in k or "token" in k or k == "private_key")
    ]


@pytest.mark.only_database("postgresql")  # one full run suffices
def _ended(prefect: SyncPrefectClient, run_id: UUID) -> Any:
    run = prefect.read_flow_run(run_id)
    return run if run.state is not None and run.state.is_final() else None


def test_no_secret_reaches_logs_parameters_or_api_output(
    client: TestClient, tenant: Tenant, fakes: FakeProviders, prefect_stack: PrefectStack
) -> None:
    """API keys and provider credentials never appear in API output, flow-run parameters,
    Prefect's run logs or the server and worker log files."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    outputs: list[str] = []
    secrets = [tenant.writer, tenant.reader]
    secrets += _secret_values(
        fakes.gmail.create_mailbox(tenant.gmail_address).provider_credentials()
    )
    secrets += _secret_values(
        fakes.microsoft.create_mailbox(tenant.microsoft_address).provider_credentials()
    )
    job_id = trigger(client, tenant)
    final = wait(client, tenant, job_id)
    outputs.append(str(final))
    fakes.gmail.revoke(tenant.gmail_address)
    failed = wait(client, tenant, trigger(client, tenant, {"provider": "gmail"}))
    assert failed["status"] == "failed"
    outputs.append(str(failed))
    with Session(get_engine(prefect_stack.settings.resolved_database_url)) as session:
        run_ids = [
            UUID(j.flow_run_id)
            for j in session.exec(
                select(SyncJob).where(SyncJob.workspace_id == tenant.workspace_id)
            )
            if j.flow_run_id
        ]
    with prefect_stack.client() as prefect:
        for run_id in run_ids:
            # A job ends before its run does, and the run's logs are shipped in batches up to
            # its exit: wait for the run to end and for its logs to arrive.
            run = eventually(partial(_ended, prefect, run_id), f"flow run {run_id} to end")
            outputs.append(str(run.parameters))
            only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            logs = eventually(
                partial(prefect.read_logs, only_this_run), f"the logs of {run_id}", timeout=30
            )
            outputs.extend(log.message for log in logs)
    outputs.extend(p.read_text(errors="replace") for p in prefect_stack.stack.log_dir.glob("*.log"))
    assert len(secrets) >= 5
    haystack = "\n".join(outputs)
    for secret in secrets:
        assert secret not in haystack
