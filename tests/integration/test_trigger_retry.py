"""A trigger retried after Prefect created its run but the answer was lost gets a job of its
own that runs: never another job's run."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from mailsync.api.app import create_app
from mailsync.orchestration.orchestrator import Orchestrator
from tests.support.api import make_tenant
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.only_database("sqlite")]


class AnswersLost(httpx.BaseTransport):
    """Sends every request to Prefect; while `losing`, the answer to a flow-run creation is
    lost on the way back (a timeout after Prefect created the run)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.losing = True
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.losing and request.url.path.endswith("/create_flow_run"):
            response.read()
            response.close()
            self.lost += 1
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_retry_after_a_lost_answer_runs_its_own_job(
    prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """Prefect created run 1 for job 1, the API never heard back and answered 503; the
    client retried with the same Idempotency-Key as told. The retry's job 2 must get a run
    of its own, carrying job 2, and complete (before: Prefect's idempotency key, derived from
    the workspace, the key and the day, handed job 2 run 1, which refused to run a job that
    had already failed, so job 2 failed after its 202)."""
    settings = prefect_stack.settings.model_copy(update={"prefect_call_budget_seconds": 3.0})
    tenant = make_tenant(settings, fakes, providers=("gmail",))
    transport = AnswersLost()
    orchestrator = Orchestrator(prefect_stack.api_url, settings, transport=transport)
    headers = {**tenant.auth(), "Idempotency-Key": str(uuid.uuid4())}
    with TestClient(create_app(settings, orchestrator), raise_server_exceptions=False) as api:
        lost = api.post("/v1/email/sync", headers=headers, json={})
        assert lost.status_code == 503, lost.text
        assert transport.lost >= 1
        transport.losing = False
        retried = api.post("/v1/email/sync", headers=headers, json={})
        assert retried.status_code == 202, retried.text
        job_id = retried.json()["data"]["job_id"]

        def ended() -> dict[str, Any] | None:
            data: dict[str, Any] = api.get(
                f"/v1/email/sync/{job_id}", headers=tenant.auth()
            ).json()["data"]
            return data if data["status"] in ("completed", "failed") else None

        job = eventually(ended, f"job {job_id} to end", timeout=90)
    assert job["status"] == "completed", job
    with prefect_stack.client() as prefect:
        [run] = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[job_id]))
        )
        assert run.parameters["job_id"] == job_id
