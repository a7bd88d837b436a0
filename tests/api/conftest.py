"""Fixtures for API tests: a workspace with keys and connected fake mailboxes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from mailsync import apikeys, workspaces
from mailsync.api.app import create_app
from mailsync.crypto import CredentialBox
from mailsync.db import session_scope
from mailsync.settings import Settings
from tests.conftest import FakeProviders


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
    settings: Settings, fakes: FakeProviders, providers: tuple[str, ...] = ("gmail", "microsoft")
) -> Tenant:
    suffix = secrets.token_hex(4)
    workspace_id = f"ws-{suffix}"
    addresses = {p: f"user-{suffix}@{p}.example" for p in ("gmail", "microsoft")}
    box = CredentialBox(settings.fernet_key())
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, workspace_id)
        for provider in providers:
            credentials = fakes.account(provider, addresses[provider])["credentials"]
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
