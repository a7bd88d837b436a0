"""Load shedding (mailsync/api/overload.py) under real concurrent requests on a real server.

The app is the real one, served as `mailsync up` serves it, on the real Prefect stack, with
tiny caps (2 triggers, 4 requests in flight, a 0.5 s wait). Prefect is made slow the honest
way: the app reaches it through a TCP proxy that holds every chunk a client sends for
0.25 s, so each trigger (several Prefect calls) takes most of a second or more, and twelve
at once cannot all be served within the wait. The flow runs are created on a deployment of their own
that no worker serves, so they stay queued and cost nothing else.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from sqlmodel import Session, select

from mailsync.api.app import create_app
from mailsync.api.overload import Gates
from mailsync.db import get_engine
from mailsync.db.tables import SyncJob
from mailsync.settings import Settings
from tests.support.api import Tenant, make_tenant
from tests.support.overload import (
    GENERAL_CAP,
    SLOW_S,
    SYNC_CAP,
    URL,
    WAIT_S,
    ObservedOrchestrator,
    SlowProxy,
)
from tests.support.servers import serve_like_up
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually

BURST = 12
QUOTA = 100


@dataclass
class Drill:
    url: str
    tenant: Tenant
    orchestrator: ObservedOrchestrator
    gates: Gates
    settings: Settings
    prefect: SyncPrefectClient
    proxy: SlowProxy
    deployment_id: UUID

    def jobs(self) -> dict[str, SyncJob]:
        with Session(get_engine(self.settings.resolved_database_url)) as session:
            query = select(SyncJob).where(SyncJob.workspace_id == self.tenant.workspace_id)
            return {job.id: job for job in session.exec(query)}

    def quota_slots_taken(self) -> int:
        name = self.orchestrator.admission.quota_limit(self.tenant.workspace_id).name
        return self.orchestrator.limits.active_slots(name)


@pytest.fixture
def drill(prefect_stack: PrefectStack, fakes: FakeProviders) -> Iterator[Drill]:
    name = f"overload-drill-{secrets.token_hex(4)}"
    prefect = prefect_stack.client()
    prefect.__enter__()
    flow_id = prefect.create_flow_from_name(name)
    deployment_id = prefect.create_deployment(
        flow_id=flow_id, name="drill", enforce_parameter_schema=False
    )
    proxy = SlowProxy(int(prefect_stack.api_url.split(":")[-1].split("/")[0]), delay=SLOW_S)
    settings = prefect_stack.settings.model_copy(
        update={
            "prefect_api_url": proxy.url,
            "sync_quota": QUOTA,
            "max_in_flight": GENERAL_CAP,
            "max_in_flight_sync": SYNC_CAP,
            # One tenant from one address: every slot is its to take here.
            "max_in_flight_per_client": GENERAL_CAP,
            "max_in_flight_sync_per_caller": SYNC_CAP,
            "health_max_in_flight": 1,
            "overload_wait_seconds": WAIT_S,
            "request_quota_per_minute": 100_000,
            "address_quota_per_minute": 100_000,
        }
    )
    orchestrator = ObservedOrchestrator(proxy.url, settings, deployment=f"{name}/drill")
    tenant = make_tenant(settings, fakes, providers=("gmail",))
    app = create_app(settings, orchestrator)
    try:
        with serve_like_up(app, settings) as (host, port):
            url = f"http://{host}:{port}"
            gates = app.state.overload
            yield Drill(url, tenant, orchestrator, gates, settings, prefect, proxy, deployment_id)
    finally:
        proxy.close()
        prefect.delete_deployment(deployment_id)
        prefect.__exit__(None, None, None)


@dataclass
class Outcome:
    status: int
    seconds: float
    headers: httpx.Headers
    body: dict[str, Any]


@pytest.mark.integration
@pytest.mark.only_database("sqlite")
def test_overload_sheds_quickly_and_shed_requests_leave_nothing(drill: Drill) -> None:
    """Twelve concurrent triggers against 2 trigger slots, each trigger slowed past the wait by
    a slow Prefect: never more than 2 triggers (and 4 requests) in flight; every request is
    either accepted (202, its job recorded with its flow run) or shed with 503
    service_unavailable, Retry-After 1-2 s and X-Request-ID within the 0.5 s wait (+1 s of
    slack); the shed requests created no job and took no quota slot; meanwhile /health
    (its own allowance) and a job read (a general slot) are still served."""
    # One trigger at full speed first: the quota's limit exists, the deployment is known.
    drill.proxy.delay = 0
    warmup = httpx.post(f"{drill.url}{URL}", json={}, headers=drill.tenant.auth(), timeout=30)
    assert warmup.status_code == 202, warmup.text
    warmup_job = warmup.json()["data"]["job_id"]
    assert drill.quota_slots_taken() == 1
    drill.proxy.delay = SLOW_S

    outcomes: list[Outcome] = []
    side: dict[str, int] = {}
    barrier = threading.Barrier(BURST + 1)

    def trigger() -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            started = time.monotonic()
            response = client.post(f"{drill.url}{URL}", json={}, headers=drill.tenant.auth())
            outcomes.append(
                Outcome(
                    response.status_code,
                    time.monotonic() - started,
                    response.headers,
                    response.json(),
                )
            )

    threads = [threading.Thread(target=trigger) for _ in range(BURST)]
    for thread in threads:
        thread.start()
    barrier.wait()
    # Looked at while the trigger slots are taken (the others wait for them, or were shed).
    eventually(lambda: drill.gates.sync.in_use == SYNC_CAP, "the trigger slots taken", 10, 0.01)
    with httpx.Client(timeout=30, headers=drill.tenant.auth()) as client:
        side["health"] = client.get(f"{drill.url}/health").status_code
        side["job"] = client.get(f"{drill.url}{URL}/{warmup_job}").status_code
    for thread in threads:
        thread.join(timeout=60)
    drill.proxy.delay = 0

    accepted = [o for o in outcomes if o.status == 202]
    shed = [o for o in outcomes if o.status == 503]
    summary = sorted((o.status, round(o.seconds, 2)) for o in outcomes)
    print(f"\noverload: {len(accepted)} accepted, {len(shed)} shed; (status, s): {summary}")
    print(
        f"peaks: triggers {drill.orchestrator.peak}, sync gate {drill.gates.sync.peak}, "
        f"general gate {drill.gates.general.peak}; side requests {side}"
    )
    assert len(outcomes) == BURST and len(accepted) + len(shed) == BURST, summary
    assert len(accepted) >= SYNC_CAP and shed, summary

    # The cap held where the work is, and in the gates.
    assert drill.orchestrator.peak <= SYNC_CAP
    assert drill.gates.sync.peak <= SYNC_CAP and drill.gates.general.peak <= GENERAL_CAP

    # Shed quickly, and clearly.
    for outcome in shed:
        error = outcome.body["error"]
        assert error["code"] == "service_unavailable" and error["message"]
        assert error["request_id"] == outcome.headers["x-request-id"]
        assert outcome.headers["retry-after"] in ("1", "2")
        assert outcome.headers["x-ratelimit-limit"] == outcome.headers["x-ratelimit-remaining"]
        assert outcome.seconds < WAIT_S + 1.0, summary

    # Nothing left behind by a shed request: jobs and quota slots are the accepted ones'.
    jobs = drill.jobs()
    assert set(jobs) == {warmup_job, *(o.body["data"]["job_id"] for o in accepted)}
    assert drill.quota_slots_taken() == 1 + len(accepted)
    assert drill.gates.sync.shed + drill.gates.general.shed == len(shed)

    # Accepted ones completed: each job has its flow run, queued on the drill deployment.
    for job in jobs.values():
        assert job.flow_run_id, job.id
        run = drill.prefect.read_flow_run(UUID(job.flow_run_id))
        assert run.name == job.id and run.deployment_id == drill.deployment_id
        drill.prefect.delete_flow_run(run.id)

    # Other work went on beside the queued triggers.
    assert side == {"health": 200, "job": 200}
    assert drill.gates.sync.in_use == drill.gates.general.in_use == 0
