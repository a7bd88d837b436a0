"""Beyond one process: a Prefect server on PostgreSQL, `mailsync up --workers 2` against it
(an external PREFECT_API_URL), the app database on PostgreSQL; syncs spread over both
workers and the sync rules hold across them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
)
from sqlmodel import Session, select

from mailsync.core import apikeys, workspaces
from mailsync.core.schedule.summaries import artifact_key
from mailsync.core.sync import index
from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox
from mailsync.devstack.stack import StackSpec, start_stack
from mailsync.fakes.server import free_port
from mailsync.settings import Settings, new_prefect_auth_string
from tests.support.api import Tenant, make_tenant, start_ui_run, wait_final
from tests.support.databases import PG_PROBLEM, POSTGRES_ADMIN_URL
from tests.support.processes import read_until, stop_up
from tests.support.stack import ENCRYPTION_KEY, FAST_QUOTA, FakeProviders, make_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
URL = "/v1/email/sync"
WORKER_LABEL = "prefect.worker.name"


@dataclass
class ScaledOut:
    api: str  # the mailsync API
    prefect_api: str
    settings: Settings  # the test's view: app database, fakes, encryption key
    prefect_auth: str  # the server's PREFECT_SERVER_API_AUTH_STRING, every machine's too

    def prefect(self) -> SyncPrefectClient:
        return SyncPrefectClient(self.prefect_api, auth_string=self.prefect_auth)

    def post(self, tenant: Tenant | Crowd, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.api}{URL}", json=body, headers=tenant.auth(), timeout=60)

    def get(self, tenant: Tenant | Crowd, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.api}{URL}/{job_id}", headers=tenant.auth(), timeout=30)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def wait(
        self, tenant: Tenant | Crowd, job_id: str, until: tuple[str, ...], timeout: float = 90
    ) -> Any:
        return eventually(
            lambda: self.get(tenant, job_id),
            f"{job_id} {until}",
            timeout,
            0.25,
            until=lambda data: data["status"] in until,
        )


def _prefect_database() -> tuple[str, str]:
    """A fresh PostgreSQL database for the Prefect server: (name, asyncpg URL)."""
    name = f"mailsync_prefect_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].split("://", 1)[1]
    return name, f"postgresql+asyncpg://{base}/{name}"


@pytest.fixture(scope="module")
def scaled(
    postgres_url: str, fakes: FakeProviders, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScaledOut]:
    if PG_PROBLEM:
        pytest.skip(PG_PROBLEM)
    tmp = tmp_path_factory.mktemp("scale-out")
    started = time.monotonic()
    db_name, prefect_db = _prefect_database()
    api_port = free_port()
    # devstack's assembler, for the Prefect server alone (on PostgreSQL): `mailsync up` is
    # then pointed at it, as on a second machine.
    # As README's "Going beyond one machine" has it: one auth string, set on every machine.
    auth = new_prefect_auth_string()
    server_spec = StackSpec(
        workdir=tmp / "prefect-server",
        prefect_auth_string=auth,
        prefect_port=free_port(),
        prefect_settings={
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db,
            # `mailsync up` activates the schedules; no refresh round may run behind the test.
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        },
        deployments=False,
        schedules=False,
        workers=0,
    )
    up: subprocess.Popen[str] | None = None
    try:
        with start_stack(server_spec) as server:
            prefect_api = server.prefect_api_url
            env = {
                **{
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith(("MAILSYNC_", "PREFECT_"))
                },
                **fakes.env(),
                "PREFECT_API_URL": prefect_api,  # an existing Prefect: `up` starts none
                "PREFECT_API_AUTH_STRING": auth,  # its clients' (workers, flow runs, the API)
                "MAILSYNC_DATA_DIR": str(tmp / "data"),
                "MAILSYNC_DATABASE_URL": postgres_url,
                "MAILSYNC_ENCRYPTION_KEY": ENCRYPTION_KEY,
                "MAILSYNC_GMAIL_QUOTA_UNITS_PER_MINUTE": str(FAST_QUOTA),
                # One run at a time per worker: a busy worker leaves the next run to the other.
                "MAILSYNC_WORKER_LIMIT": "1",
                "COLUMNS": "200",
            }
            try:
                up = subprocess.Popen(
                    [sys.executable, "-m", "mailsync.cli", "up", "--workers", "2", "--port",
                     str(api_port)],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                )  # fmt: skip
                output = read_until(up, "Ctrl-C stops everything", timeout=120)
                assert f"using the Prefect server at {prefect_api}" in output
                assert auth not in output
                print(f"stack up in {time.monotonic() - started:.1f} s")
                yield ScaledOut(
                    f"http://127.0.0.1:{api_port}",
                    prefect_api,
                    make_settings(tmp / "test-data", postgres_url, fakes),
                    auth,
                )
            finally:
                if up is not None:
                    stop_up(up)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _runs(prefect: SyncPrefectClient, names: list[str]) -> dict[str, Any]:
    runs = prefect.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=names)), limit=200
    )
    return {r.name: r for r in runs}


@dataclass
class Crowd:
    """A workspace with several mailboxes per provider, and a write+read key."""

    workspace_id: str
    key: str

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _crowd(settings: Settings, fakes: FakeProviders, gmail: int, microsoft: int) -> Crowd:
    workspace_id = f"crowd-{secrets.token_hex(4)}"
    box = CredentialBox(settings.fernet_key())
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, workspace_id)
        for provider, count in (("gmail", gmail), ("microsoft", microsoft)):
            for i in range(count):
                address = f"u{i}-{workspace_id}@{provider}.example"
                credentials = fakes.admin(provider).create_mailbox(address).provider_credentials()
                workspaces.connect_mailbox(
                    session, box, workspace_id, provider, address, credentials
                )
        _, key = apikeys.create_api_key(session, workspace_id, ["write:email", "read:email"])
    return Crowd(workspace_id, key)


def _indexed(settings: Settings, fakes: FakeProviders, workspace_id: str) -> list[bool]:
    """Per mailbox: does its index hold exactly the provider's messages?"""
    with Session(get_engine(settings.resolved_database_url)) as session:
        mailboxes = session.exec(select(Mailbox).where(Mailbox.workspace_id == workspace_id))
        return [
            index.message_ids(session, m.id) == set(fakes.admin(m.provider).ids(m.address))
            for m in mailboxes
        ]


def test_twenty_mailboxes_spread_over_two_workers(scaled: ScaledOut, fakes: FakeProviders) -> None:
    """4 workspaces x (3 Gmail + 2 Microsoft mailboxes) synced through the API, one job
    (flow run) each: every job completes, every one of the 20 mailboxes' index holds exactly
    the provider's messages, and Prefect's record of the runs (the worker label each run
    gets) shows both workers took runs."""
    crowds = [_crowd(scaled.settings, fakes, gmail=3, microsoft=2) for _ in range(4)]
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        accepted = list(pool.map(lambda c: scaled.post(c, {}), crowds))
    assert [r.status_code for r in accepted] == [202] * 4, [r.text for r in accepted]
    jobs = [r.json()["data"]["job_id"] for r in accepted]
    views = [scaled.wait(c, j, ("completed", "failed")) for c, j in zip(crowds, jobs, strict=True)]
    print(f"4 jobs (20 mailboxes) done in {time.monotonic() - started:.1f} s")
    assert [v["status"] for v in views] == ["completed"] * 4, views
    assert [len(v["mailboxes"]) for v in views] == [5] * 4
    assert [_indexed(scaled.settings, fakes, c.workspace_id) for c in crowds] == [[True] * 5] * 4

    with scaled.prefect() as prefect:
        runs = _runs(prefect, jobs)
    assert set(runs) == set(jobs)
    workers = {r.labels.get(WORKER_LABEL) for r in runs.values()}
    assert len(workers) == 2 and all(w and w.startswith("mailsync-") for w in workers), workers


def test_one_full_sync_at_a_time_across_workers(scaled: ScaledOut, fakes: FakeProviders) -> None:
    """While a full sync runs on one worker, a second full sync request for the same
    workspace and provider gets 409 naming it, and a run started like the Prefect UI's Run
    (picked up by the other worker) fails fast with sync_in_progress; that run carries the
    job id and the workspace/provider/mode tags, and a summary artifact is written."""
    tenant = make_tenant(scaled.settings, fakes, providers=("microsoft",))
    address = tenant.microsoft_address
    # Every Graph call of this mailbox takes 5 s: the full sync runs long enough for a second
    # request and for a UI-style run to start on the other worker.
    fakes.microsoft.slow_down(address, 10000)
    try:
        first = scaled.post(tenant, {"mode": "full", "provider": "microsoft"})
        assert first.status_code == 202, first.text
        job_id = first.json()["data"]["job_id"]
        scaled.wait(tenant, job_id, ("running",))
        refused = scaled.post(tenant, {"mode": "full", "provider": "microsoft"})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == {**refused.json()["error"], "code": "sync_in_progress",
                                           "job_id": job_id}  # fmt: skip
        with scaled.prefect() as prefect:
            ui_run = start_ui_run(prefect, tenant.workspace_id, ["microsoft"], "full")
            ui_run = wait_final(prefect, ui_run)
            assert scaled.get(tenant, job_id)["status"] == "running"
            full_run = _runs(prefect, [job_id])[job_id]
    finally:
        fakes.microsoft.release(address)
    assert ui_run.state is not None and ui_run.state.is_failed(), ui_run.state
    failed = scaled.get(tenant, ui_run.name)
    assert failed["error"]["code"] == "sync_in_progress"
    assert {f"workspace:{tenant.workspace_id}", "provider:microsoft", "mode:full"} <= set(
        ui_run.tags
    )
    assert ui_run.labels.get(WORKER_LABEL) != full_run.labels.get(WORKER_LABEL)
    assert scaled.wait(tenant, job_id, ("completed", "failed"))["status"] == "completed"
    # The run writes its summary right after recording the job's end.
    wanted = ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key("sync-summary", job_id)]))
    with scaled.prefect() as prefect:
        found = eventually(
            lambda: prefect.read_artifacts(artifact_filter=wanted), "the summary artifact", 20, 0.3
        )
    assert f"# Sync {job_id}" in str(found[0].data) and "cursor after" in str(found[0].data)
