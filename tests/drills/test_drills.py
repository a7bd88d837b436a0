"""Fault drills on one real stack: the Prefect server restarted, a worker SIGKILLed and the app
database's connections dropped, each in the middle of a full sync started through the API.

Every drill ends the same way: the job's final status (GET /v1/email/sync/{id}) agrees with
its flow run's final state in Prefect, the index holds exactly the fake provider's messages
(each once, and no half-built generation left behind), and the full-sync slot is free again.
Provider faults (429/5xx) are drilled in tests/drills/test_sync_drills.py.

The module builds one stack: its own Prefect server (own PREFECT_HOME, the filesystem lease
storage `mailsync up` configures), the app database on a fresh PostgreSQL database, the
deployments registered, one process worker, the real API on a socket, and the session fakes.

Machine loss (the worker and its flow runs killed at once) is drilled in two halves, the
first test and the last, so the ~90 s Prefect takes to notice overlaps the other drills.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun
from pydantic import SecretStr
from sqlmodel import Session, select

from mailsync import db
from mailsync.api.app import create_app
from mailsync.core.rules.admission import full_sync_limit
from mailsync.core.rules.slots import LimitSpec, Refusal
from mailsync.db.tables import Mailbox, Message, SyncJob
from mailsync.devstack.processes import Child, worker_name
from mailsync.devstack.stack import LocalStack, start_stack
from mailsync.fakes.server import serve_in_thread
from mailsync.orchestration.limits import PrefectLimits
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings
from tests.support.api import Api, ManualClock, Tenant, make_tenant, slow_down, speed_up
from tests.support.databases import PG_PROBLEM, POSTGRES_ADMIN_URL
from tests.support.processes import children_of, flow_run_pids, parent_pid
from tests.support.stack import (
    FakeProviders,
    PrefectStack,
    make_settings,
    stack_spec,
)
from tests.support.waiting import eventually

# One stack for the module, its drills in order: under `--dist loadgroup` one xdist worker.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("drills")]
LEASE_S = 60  # the shortest lease Prefect grants (and MAILSYNC_FULL_SYNC_LEASE_SECONDS)
SENTINEL_LEASE_S = 120  # outlives a Prefect server restart on a loaded machine (~20-60 s)
RECLAIM_S = 15  # Prefect's repossessor loop: an expired lease is reclaimed within this


@dataclass
class Drills:
    api: Api
    stack: LocalStack  # devstack's assembler: its server restarted, its workers killed
    database: str  # the app database's name, for pg_stat_activity
    fakes: FakeProviders
    # Set by the restart drill for test_lease_taken_before_the_restart_expires.
    sentinel: LimitSpec | None = None
    restarted_at: float | None = None
    # Set by test_machine_loss_begins: the tenant, its job and when its machine "died".
    machine_loss: tuple[Tenant, str, float] | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.api.stack.settings

    @property
    def prefect_api(self) -> str:
        return self.stack.prefect_api_url

    @property
    def database_url(self) -> str:
        url: str = self.settings.resolved_database_url
        return url

    def limits(self) -> tuple[SyncPrefectClient, PrefectLimits]:
        client = self.api.stack.client()
        return client, PrefectLimits(lambda: client)

    def kill_worker(self, also: list[int] | None = None) -> Child:
        """SIGKILL a running worker (and the `also` pids), as when its machine dies."""
        worker = self.stack.workers()[0]
        for pid in [worker.process.pid, *(also or [])]:
            os.kill(pid, signal.SIGKILL)
        worker.process.wait()
        self.stack.processes.children.remove(worker)
        return worker

    def full_sync(self, tenant: Tenant, provider: str) -> str:
        response = self.api.post(tenant, {"mode": "full", "provider": provider})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["data"]["job_id"]
        return job_id

    def flow_run_id(self, tenant: Tenant, job_id: str) -> str:
        def probe() -> str | None:
            return next((j.flow_run_id for j in self.api.jobs(tenant) if j.id == job_id), None)

        return eventually(probe, f"the flow run of {job_id}", 30)

    def processed(self, tenant: Tenant, job_id: str) -> int:
        view = self.api.get(tenant, job_id)
        return int((view.get("progress") or {}).get("processed", 0))

    def mailbox(self, tenant: Tenant, provider: str) -> Mailbox:
        with Session(db.get_engine(self.database_url)) as session:
            return session.exec(
                select(Mailbox).where(
                    Mailbox.workspace_id == tenant.workspace_id, Mailbox.provider == provider
                )
            ).one()


@pytest.fixture(scope="module")
def drills(fakes: FakeProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drills]:
    if PG_PROBLEM:
        pytest.skip(PG_PROBLEM)
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("drills")
    # A database of its own: drill 3 terminates every connection to it.
    name = f"mailsync_drills_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{url}/{name}"
    # devstack's assembler, as `mailsync up` and the shared fixture use it: its own Prefect
    # server (own PREFECT_HOME, the filesystem lease storage), the deployments without their
    # schedules, one warm worker.
    settings = make_settings(tmp / "data", url, fakes)
    try:
        db.upgrade(url)
        with start_stack(stack_spec(tmp, settings, fakes)) as stack:
            auth = stack.prefect_auth_string
            assert auth is not None
            update = {
                "prefect_api_url": stack.prefect_api_url,
                "prefect_auth_string": SecretStr(auth),
            }
            settings = settings.model_copy(update=update)
            clock = ManualClock()
            orchestrator = Orchestrator(stack.prefect_api_url, settings, clock=clock)
            with serve_in_thread(create_app(settings, orchestrator), None) as api_url:
                print(f"drill stack up in {time.monotonic() - started:.1f} s")
                prefect = PrefectStack(stack.prefect_api_url, stack.processes, settings, auth)
                yield Drills(Api(api_url, clock, prefect), stack, name, fakes)
    finally:
        # Flow-run processes live in sessions of their own (see the worker drill): stop any
        # one a failed drill left behind.
        with Session(db.get_engine(url)) as session:
            run_ids = [j.flow_run_id for j in session.exec(select(SyncJob)) if j.flow_run_id]
        for run_id in run_ids:
            for pid in flow_run_pids(run_id):
                os.kill(pid, signal.SIGKILL)
        db.get_engine(url).dispose()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- what every drill checks at the end ------------------------------------------------------


def final_flow_run(drills: Drills, flow_run_id: str) -> FlowRun:
    with drills.api.stack.client() as client:

        def probe() -> FlowRun | None:
            run = client.read_flow_run(UUID(flow_run_id))
            return run if run.state is not None and run.state.is_final() else None

        # The job row is written just before the run's last steps (summary, final state).
        return eventually(probe, f"a final state of flow run {flow_run_id}", 30)


def assert_truthful(drills: Drills, tenant: Tenant, job: dict[str, Any]) -> FlowRun:
    """The job's status agrees with its flow run's final state in Prefect."""
    run = final_flow_run(drills, drills.flow_run_id(tenant, job["job_id"]))
    assert run.state is not None
    if job["status"] == "completed":
        assert run.state.is_completed(), (job, run.state)
        assert job["error"] is None
    else:
        assert job["status"] == "failed" and not run.state.is_completed(), (job, run.state)
        assert job["error"]["code"] and job["error"]["message"], job
    return run


def assert_exact(drills: Drills, tenant: Tenant, provider: str, address: str) -> int:
    """The live index holds exactly the fake's messages, each once, and no other generation
    (a half-built rebuild) is left over. Returns the number of messages."""
    mailbox = drills.mailbox(tenant, provider)
    with Session(db.get_engine(drills.database_url)) as session:
        rows = session.exec(
            select(Message.generation, Message.provider_message_id).where(
                Message.mailbox_id == mailbox.id
            )
        ).all()
    duplicates = [k for k, n in Counter(rows).items() if n > 1]
    assert not duplicates, f"duplicate index rows: {duplicates[:5]}"
    stray = [r for r in rows if r[0] != mailbox.generation]
    assert not stray and mailbox.building_generation is None, f"{len(stray)} stray rows"
    live = [pid for _, pid in rows]
    expected = set(drills.fakes.admin(provider).ids(address))
    assert len(live) == len(set(live))
    assert set(live) == expected, (len(set(live) - expected), len(expected - set(live)))
    return len(expected)


def assert_slot_free(drills: Drills, tenant: Tenant, provider: str) -> None:
    """Nothing holds the workspace+provider full-sync slot any more (the run released it)."""
    client, limits = drills.limits()
    with client:
        name = full_sync_limit(tenant.workspace_id, provider).name
        eventually(lambda: limits.active_slots(name) == 0, f"{name} free", 10)


# -- the drills ------------------------------------------------------------------------------


def test_machine_loss_begins(drills: Drills) -> None:
    """First half of the machine-loss drill (the second is the module's last test, so the
    ~90 s Prefect needs to notice overlaps the other drills): a full sync runs, then its worker
    and the flow run's processes are all SIGKILLed, as when the machine dies. Nothing is left
    to report a final state, so the run stays RUNNING, and for now the job with it."""
    fakes = drills.fakes
    tenant = make_tenant(drills.settings, fakes, ("microsoft",), messages=600)
    slow_down(fakes, "microsoft", tenant.microsoft_address, 1000)
    job_id = drills.full_sync(tenant, "microsoft")
    eventually(lambda: drills.processed(tenant, job_id), "a first page written", 60)
    flow_run_id = drills.flow_run_id(tenant, job_id)
    # The beat that starts the automation's wait: runs beat every 30 s from their start.
    eventually(lambda: heartbeats(drills, flow_run_id), "the run's first heartbeat", 45, 1)
    drills.kill_worker(also=flow_run_pids(flow_run_id))
    drills.machine_loss = (tenant, job_id, time.monotonic())
    drills.stack.start_worker(0)  # the replacement machine, for the drills in between
    speed_up(fakes, "microsoft", tenant.microsoft_address)
    assert drills.api.get(tenant, job_id)["status"] == "running"
    refused = drills.api.post(tenant, {"mode": "full", "provider": "microsoft"})
    assert refused.status_code == 409, refused.text  # the dead run still holds the provider


def heartbeats(drills: Drills, flow_run_id: str) -> int:
    """How many heartbeat events Prefect has recorded for the flow run."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with drills.api.stack.client() as client:
        response = client.request(
            "POST",
            "/events/filter",
            json={
                "filter": EventFilter(
                    event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                    resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
                ).model_dump(mode="json"),
                "limit": 50,
            },
        )
        return len(response.json().get("events", []))


def test_prefect_server_restart_mid_sync(drills: Drills) -> None:
    """Stop the Prefect server (SIGTERM) while a full sync runs and start it again on the same
    port and PREFECT_HOME. Leases survive the restart (filesystem lease storage): the running
    job's slot and a sentinel lease taken just before the restart are both still held after
    it. The job ends truthfully and exactly (its run rides out the outage: the Prefect client
    retries refused connections once it has connected), and its slot is free afterwards."""
    fakes, api = drills.fakes, drills.api
    tenant = make_tenant(drills.settings, fakes, ("gmail",), messages=3000)
    address = tenant.gmail_address
    slow_down(fakes, "gmail", address, 300)  # ~3.5 s a page of 500: running across the restart
    job_id = drills.full_sync(tenant, "gmail")
    eventually(lambda: drills.processed(tenant, job_id), "a first page written", 60)
    # Taken just before the restart, for longer than a restart takes on a loaded machine: a
    # 60 s lease taken before the first page was seen to expire before the server was back.
    drills.sentinel = full_sync_limit(f"drill-{secrets.token_hex(3)}", "gmail")
    client, limits = drills.limits()
    with client:
        assert isinstance(limits.take([drills.sentinel], SENTINEL_LEASE_S), str)

    down = time.monotonic()
    drills.stack.restart_prefect_server()
    drills.restarted_at = time.monotonic()
    slot = full_sync_limit(tenant.workspace_id, "gmail")
    client, limits = drills.limits()
    with client:
        assert isinstance(limits.take([drills.sentinel], LEASE_S), Refusal), "a lease was lost"
        assert isinstance(limits.take([slot], LEASE_S), Refusal), "the job's lease was lost"
    assert api.get(tenant, job_id)["status"] == "running"
    speed_up(fakes, "gmail", address)

    job = api.wait(tenant, job_id, timeout=90)
    recovered = time.monotonic() - down
    run = assert_truthful(drills, tenant, job)
    if job["status"] == "failed":
        # A failed job must not keep the slot: a new full sync is accepted and repairs it.
        job = api.wait(tenant, drills.full_sync(tenant, "gmail"), timeout=90)
        assert_truthful(drills, tenant, job)
    assert job["status"] == "completed", job
    indexed = assert_exact(drills, tenant, "gmail", address)
    assert_slot_free(drills, tenant, "gmail")
    drills.figures["restart"] = {
        "outage_s": round(drills.restarted_at - down, 1),
        "job_end_s": round(recovered, 1),
        "run_state": run.state.name if run.state else None,
        "indexed": indexed,
    }
    print(drills.figures["restart"])


def test_worker_sigkill_mid_sync(drills: Drills) -> None:
    """SIGKILL the process worker while it runs a full sync, then start a new worker.

    What happens to the flow run: the process worker starts it as its child, in a session of
    its own (Prefect isolates the process group on POSIX), so the SIGKILL does not reach it:
    it is re-parented and carries on syncing. But its stdout/stderr are pipes the dead worker
    read: its next console log line (at the latest the task's "Finished in state") hits a
    broken pipe, rich's console answers with SystemExit, and Prefect records the run as
    Crashed; its on_crashed hook releases the full-sync lease. The new worker never touches
    it (the run was RUNNING, not scheduled). So the job ends failed with job_crashed, the slot
    is free at once (no lease wait), the orphan exits, and a new full sync is accepted, runs
    on the new worker and ends exact."""
    fakes, api = drills.fakes, drills.api
    tenant = make_tenant(drills.settings, fakes, ("microsoft",), messages=1200)
    address = tenant.microsoft_address
    slow_down(fakes, "microsoft", address, 1000)  # ~1 s a page of 100 per folder
    job_id = drills.full_sync(tenant, "microsoft")
    before = eventually(lambda: drills.processed(tenant, job_id), "a first page written", 60)
    flow_run_id = drills.flow_run_id(tenant, job_id)
    pids = flow_run_pids(flow_run_id)
    worker = drills.stack.workers()[0]
    # Started by the worker: its child (stock worker) or its zygote's (warm worker).
    lineage = {worker.process.pid, *children_of(worker.process.pid)}
    assert {parent_pid(p) for p in pids} <= lineage, pids
    assert all(os.getsid(p) != worker.process.pid for p in pids), "same session as the worker"

    killed = time.monotonic()
    drills.kill_worker()
    # Orphaned (re-parented), alive, and still working with no worker at all.
    assert all(parent_pid(p) != worker.process.pid for p in flow_run_pids(flow_run_id))
    eventually(lambda: drills.processed(tenant, job_id) > before, "progress after the kill", 30)
    drills.stack.start_worker(1)
    speed_up(fakes, "microsoft", address)

    job = api.wait(tenant, job_id, timeout=60)
    crashed = time.monotonic() - killed
    run = assert_truthful(drills, tenant, job)
    assert run.state is not None and run.state.is_crashed(), run.state
    assert job["status"] == "failed" and job["error"]["code"] == "job_crashed", job
    assert_slot_free(drills, tenant, "microsoft")
    eventually(lambda: not flow_run_pids(flow_run_id), "the orphaned run to exit", 30)

    retry = api.wait(tenant, drills.full_sync(tenant, "microsoft"), timeout=60)
    recovered = time.monotonic() - killed
    retry_run = assert_truthful(drills, tenant, retry)
    assert retry["status"] == "completed", retry
    assert retry_run.labels.get("prefect.worker.name") == worker_name(1)
    indexed = assert_exact(drills, tenant, "microsoft", address)
    assert_slot_free(drills, tenant, "microsoft")
    drills.figures["worker"] = {
        "job_failed_s": round(crashed, 1),
        "recovered_s": round(recovered, 1),
        "indexed": indexed,
    }
    print(drills.figures["worker"])


def test_database_connections_dropped_mid_sync(drills: Drills) -> None:
    """Terminate every connection to the app database (pg_terminate_backend) while a full
    sync is inside a page's write transaction: to be sure of hitting one, the test holds a
    lock on the mailbox row until the sync's next write waits on it. The page's transaction
    (its messages and checkpoint) is rolled back, the task retries (a lost connection is
    transient), resumes from the last stored checkpoint in the same job, and the index ends
    exact with no duplicate rows; the API, whose pooled connections died too, keeps
    answering (pool_pre_ping)."""
    fakes, api = drills.fakes, drills.api
    tenant = make_tenant(drills.settings, fakes, ("gmail",), messages=2000)
    address = tenant.gmail_address
    slow_down(fakes, "gmail", address, 200)  # ~2 s a page of 500
    job_id = drills.full_sync(tenant, "gmail")
    eventually(lambda: drills.mailbox(tenant, "gmail").checkpoint, "a first page stored", 60)
    mailbox_id = drills.mailbox(tenant, "gmail").id

    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/{drills.database}") as conn:
        conn.execute("SELECT 1 FROM mailbox WHERE id = %s FOR UPDATE", (mailbox_id,))
        me = conn.info.backend_pid

        def waiting() -> list[tuple[int]]:
            # pg_stat_activity is a snapshot per transaction: take a fresh one each time.
            conn.execute("SELECT pg_stat_clear_snapshot()")
            query = "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
            return conn.execute(query, (me,)).fetchall()

        blocked = eventually(waiting, "the sync's write waiting on the lock", 30, every=0.05)
        dropped = time.monotonic()
        conn.execute("SELECT pg_stat_clear_snapshot()")
        terminated = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (drills.database,),
        ).fetchall()
        conn.rollback()
    assert {p for (p,) in blocked} <= {p for p, ok in terminated if ok}
    speed_up(fakes, "gmail", address)

    job = api.wait(tenant, job_id, timeout=90)
    recovered = time.monotonic() - dropped
    assert_truthful(drills, tenant, job)
    assert job["status"] == "completed", job
    # The retry ran in the same job and resumed from the checkpoint stored before the drop.
    assert job["mailboxes"][0]["resumed"] is True, job["mailboxes"]
    indexed = assert_exact(drills, tenant, "gmail", address)
    assert_slot_free(drills, tenant, "gmail")
    drills.figures["database"] = {
        "terminated": sum(1 for _, ok in terminated if ok),
        "job_end_s": round(recovered, 1),
        "indexed": indexed,
        "counts": job["counts"],
    }
    print(drills.figures["database"])


def test_lease_taken_before_the_restart_expires(drills: Drills) -> None:
    """The sentinel lease the restart drill took (and nothing renews) frees its slot after the
    lease time plus Prefect's reclaim loop (and a margin) after the restart: with the
    filesystem lease storage `mailsync up` configures, an expired lease is reclaimed across
    restarts (seen: the in-memory default loses the lease but keeps the slot taken, forever).
    This wait overlaps
    the other drills; 60 s is the shortest lease Prefect grants."""
    sentinel, restarted = drills.sentinel, drills.restarted_at
    if sentinel is None or restarted is None:
        pytest.skip("needs test_prefect_server_restart_mid_sync")
    client, limits = drills.limits()
    with client:

        def take() -> str | None:
            taken = limits.take([sentinel], LEASE_S)
            return taken if isinstance(taken, str) else None

        # The bound tells "reclaimed" from "kept for ever" (the in-memory storage's failure);
        # its margin is for a loaded machine (95 s was seen against lease + reclaim = 75 s).
        lease = eventually(
            take, "the sentinel's slot free again", SENTINEL_LEASE_S + RECLAIM_S + 60, 1
        )
        limits.release(lease)
    freed = time.monotonic() - restarted
    print(f"sentinel slot free {freed:.1f} s after the restart")


def test_machine_loss_run_is_crashed_and_its_slot_freed(drills: Drills) -> None:
    """Second half of the machine-loss drill: with no heartbeat for 90 s, the automation that
    deployments/register.py creates (deployments/automations.py) marks the run Crashed; the
    job then reads failed with job_crashed, its full-sync slot is free, and a new full sync
    of the provider is accepted and ends exact."""
    if drills.machine_loss is None:
        pytest.skip("needs test_machine_loss_begins")
    tenant, job_id, killed = drills.machine_loss

    def ended() -> dict[str, Any] | None:
        view = drills.api.get(tenant, job_id)
        return view if view["status"] != "running" else None

    job = eventually(ended, "the lost run marked Crashed", 150, 2)
    noticed = time.monotonic() - killed
    run = assert_truthful(drills, tenant, job)
    assert run.state is not None and run.state.is_crashed(), run.state
    assert job["error"]["code"] == "job_crashed", job
    assert_slot_free(drills, tenant, "microsoft")
    retry = drills.api.wait(tenant, drills.full_sync(tenant, "microsoft"), timeout=90)
    assert retry["status"] == "completed", retry
    indexed = assert_exact(drills, tenant, "microsoft", tenant.microsoft_address)
    drills.figures["machine_loss"] = {"job_failed_s": round(noticed, 1), "indexed": indexed}
    print(drills.figures["machine_loss"])
