"""Push tests' fixtures and helpers: the API with push configured (its public URL known before
it starts, as the providers need it), a tenant whose mailbox has a push channel, its push jobs
and push state."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlmodel import Session, col, select

from mailsync.api.app import create_app
from mailsync.core.push import state as push_state
from mailsync.db import get_engine
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import JobStatus, MailboxPush, SyncJob, utcnow
from mailsync.devstack.api_server import api_server_options
from mailsync.devstack.processes import free_port
from mailsync.fakes.admin_types import PushSubscriptionSpec
from mailsync.fakes.server import serve_in_thread
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings
from tests.support.api import Api, ManualClock, Tenant
from tests.support.index import fake_index, live_index, mailbox_row
from tests.support.stack import FakeProviders, PrefectStack


@dataclass
class PushTenant:
    api: Api
    tenant: Tenant
    settings: Settings  # the stack's, with push_public_url = the API's URL
    mailbox_id: str

    @property
    def stack(self) -> PrefectStack:
        return self.api.stack

    def row(self) -> MailboxPush:
        with Session(get_engine(self.settings.resolved_database_url)) as session:
            row = session.get(MailboxPush, self.mailbox_id)
            assert row is not None
            return row

    def state(self) -> push_state.PushState:
        with Session(get_engine(self.settings.resolved_database_url)) as session:
            return push_state.push_state(session, self.mailbox_id, utcnow())

    def client_state(self) -> str:
        sealed = self.row().client_state_encrypted
        assert sealed is not None
        return str(CredentialBox(self.settings.fernet_key()).open(sealed)["client_state"])

    def push_jobs(self) -> list[SyncJob]:
        with Session(get_engine(self.settings.resolved_database_url)) as session:
            query = select(SyncJob).where(
                SyncJob.mailbox_id == self.mailbox_id, SyncJob.trigger == "push"
            )
            return list(session.exec(query.order_by(col(SyncJob.queued_at))))

    def open_push_jobs(self) -> list[SyncJob]:
        return [j for j in self.push_jobs() if not JobStatus(j.status).terminal]

    def post(self, body: Any, path: str = "/v1/push/microsoft", **headers: str) -> httpx.Response:
        return httpx.post(f"{self.api.url}{path}", json=body, headers=headers, timeout=30)

    def index_matches(self, fakes: FakeProviders, provider: str = "microsoft") -> bool:
        address = self.tenant.microsoft_address
        if provider == "gmail":
            address = self.tenant.gmail_address
        return live_index(self.stack, self.tenant, provider) == fake_index(fakes, provider, address)

    def mailbox(self, provider: str = "microsoft") -> Any:
        return mailbox_row(self.stack, self.tenant, provider)


def notification(subscription_id: str, client_state: str | None, **extra: Any) -> dict[str, Any]:
    """Graph's change notification body for one created message."""
    item: dict[str, Any] = {
        "subscriptionId": subscription_id,
        "changeType": "created",
        "resource": "Users/x/Messages/y",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": "y"},
        "tenantId": "t",
        **extra,
    }
    if client_state is not None:
        item["clientState"] = client_state
    return {"value": [item]}


PUSH_ACCOUNT = "gmail-push@mailsync-test.iam.gserviceaccount.com"


@dataclass
class PushApi:
    api: Api
    settings: Settings  # the stack's, with push configured for this API
    topic: str  # the Gmail watches' Pub/Sub topic; its push subscription points here
    subscription: PushSubscriptionSpec


@pytest.fixture
def push_api(prefect_stack: PrefectStack, fakes: FakeProviders) -> Iterator[PushApi]:
    """The real API on a real socket with push on: its URL is the push URL, Gmail watches
    publish to a topic of its own whose push subscription (at the fake Pub/Sub, with
    authentication) posts to /v1/push/gmail, and tokens verify against the fake's keys."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    suffix = secrets.token_hex(4)
    topic = f"projects/mailsync-test/topics/gmail-{suffix}"
    settings = prefect_stack.settings.model_copy(
        update={
            "push_public_url": url,
            "gmail_pubsub_topic": topic,
            "gmail_push_service_account": PUSH_ACCOUNT,
            "gmail_push_certs_url": f"{fakes.gmail_url}/oauth2/v1/certs",
        }
    )
    subscription = PushSubscriptionSpec(
        name=f"projects/mailsync-test/subscriptions/gmail-{suffix}",
        topic=topic,
        endpoint=f"{url}/v1/push/gmail",
        service_account=PUSH_ACCOUNT,
    )
    fakes.gmail.put_push_subscription(subscription)
    clock = ManualClock()
    orchestrator = Orchestrator(prefect_stack.api_url, settings, clock=clock)
    app = create_app(settings, orchestrator)
    try:
        with serve_in_thread(app, None, port, **api_server_options(settings)) as served:
            assert served == url
            yield PushApi(Api(url, clock, prefect_stack), settings, topic, subscription)
    finally:
        fakes.gmail.delete_push_subscription(subscription.name)
