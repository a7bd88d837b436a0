"""Fixtures for API tests: a workspace with keys and connected fake mailboxes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun
from sqlmodel import Session, select

from mailsync.api.app import create_app
from mailsync.core import apikeys, workspaces
from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import SyncJob, utcnow
from mailsync.devstack.api_server import api_in_thread
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually, job_ended

URL = "/v1/email/sync"


@dataclass
class Tenant:
    workspace_id: str
    writer: str  # write:email + read:email
    reader: str  # read:email only
    no_scope: str  # write:webhooks only
    gmail_address: str
    microsoft_address: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.writer}"}


def make_tenant(
    settings: Settings,
    fakes: FakeProviders,
    providers: tuple[str, ...] = ("gmail", "microsoft"),
    messages: int | None = None,
) -> Tenant:
    suffix = secrets.token_hex(4)
    workspace_id = f"ws-{suffix}"
    addresses = {p: f"user-{suffix}@{p}.example" for p in ("gmail", "microsoft")}
    box = CredentialBox(settings.fernet_key())
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, workspace_id)
        for provider in providers:
            account = fakes.admin(provider).create_mailbox(addresses[provider], messages)
            credentials = account.provider_credentials()
            workspaces.connect_mailbox(
                session, box, workspace_id, provider, addresses[provider], credentials
            )
        keys = [
            apikeys.create_api_key(session, workspace_id, scopes)[1]
            for scopes in (["write:email", "read:email"], ["read:email"], ["write:webhooks"])
        ]
    return Tenant(workspace_id, *keys, addresses["gmail"], addresses["microsoft"])


@pytest.fixture
def tenant(settings: Settings, fakes: FakeProviders) -> Tenant:
    return make_tenant(settings, fakes)


@pytest.fixture
def offline_client(settings: Settings) -> Iterator[TestClient]:
    """The real app whose Prefect API is unreachable (nothing listens on port 9)."""
    app = create_app(settings.model_copy(update={"prefect_api_url": "http://127.0.0.1:9/api"}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


class ManualClock:
    """The API's clock, movable forward so the rolling hour can pass in a test."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset


def _retry_later(response: httpx.Response) -> bool:
    if response.status_code == 503:
        return True
    if response.status_code != 409:
        return False
    return bool(response.json()["error"]["code"] == "idempotency_key_in_use")


@dataclass
class Api:
    url: str
    clock: ManualClock
    stack: PrefectStack

    def post(self, tenant: Tenant, body: dict[str, Any], **headers: str) -> httpx.Response:
        """POST as a well-behaved client does: a 503 (load shed, or Prefect slower than the
        API's budget; nothing done, nothing held) and a 409 `idempotency_key_in_use` (the
        key's first request still running after the API's 10 s wait, as on a loaded box) are
        sent again after their Retry-After."""
        while True:
            response = httpx.post(
                f"{self.url}{URL}", json=body, headers={**tenant.auth(), **headers}, timeout=60
            )
            if not _retry_later(response):
                return response
            time.sleep(float(response.headers["retry-after"]))

    def get(self, tenant: Tenant, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}{URL}/{job_id}", headers=tenant.auth(), timeout=30)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def wait(self, tenant: Tenant, job_id: str, timeout: float = 120) -> dict[str, Any]:
        """The job's view once it has ended."""
        return eventually(
            lambda: self.get(tenant, job_id), f"{job_id} to end", timeout, 0.25, until=job_ended
        )

    def jobs(self, tenant: Tenant) -> list[SyncJob]:
        with Session(get_engine(self.stack.settings.resolved_database_url)) as session:
            query = select(SyncJob).where(SyncJob.workspace_id == tenant.workspace_id)
            return list(session.exec(query))


@pytest.fixture
def api(prefect_stack: PrefectStack) -> Iterator[Api]:
    """The real API on a real socket, served as `mailsync up` serves it (api_server.py), with
    a movable clock for the quota window."""
    clock = ManualClock()
    settings = prefect_stack.settings
    orchestrator = Orchestrator(prefect_stack.api_url, settings, clock=clock)
    with api_in_thread(create_app(settings, orchestrator), settings) as url:
        yield Api(url, clock, prefect_stack)


def start_ui_run(
    prefect: SyncPrefectClient, workspace_id: str, providers: list[str], mode: str
) -> FlowRun:
    """Start a sync flow run the way the Prefect UI does: from the deployment, no job first."""
    deployment = prefect.read_deployment_by_name("sync-mailbox/sync")
    parameters = {"workspace": workspace_id, "providers": providers, "mode": mode}
    return prefect.create_flow_run_from_deployment(deployment.id, parameters=parameters)


def wait_final(prefect: SyncPrefectClient, run: FlowRun | UUID, timeout: float = 60) -> FlowRun:
    """The flow run once Prefect reports a final state."""
    run_id = run if isinstance(run, UUID) else run.id
    return eventually(
        lambda: prefect.read_flow_run(run_id),
        f"flow run {run_id} final",
        timeout,
        0.3,
        until=lambda found: found.state is not None and found.state.is_final(),
    )


def slow_down(fakes: FakeProviders, provider: str, address: str, slow_ms: int) -> None:
    """Make every provider call of the mailbox slow, so a sync stays running for a while."""
    fakes.admin(provider).slow_down(address, slow_ms)


def hold(fakes: FakeProviders, provider: str, address: str) -> None:
    """Keep every provider call of the mailbox waiting until `speed_up` (a call waits 20 s at
    most): a sync stays running exactly as long as the test needs, on any machine."""
    fakes.admin(provider).hold(address)


def speed_up(fakes: FakeProviders, provider: str, address: str) -> None:
    fakes.admin(provider).release(address)
