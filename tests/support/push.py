"""Push tests' helpers: a tenant whose mailboxes have push channels, its push jobs, its state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from sqlmodel import Session, col, select

from mailsync.core.push import state as push_state
from mailsync.db import get_engine
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import JobStatus, MailboxPush, SyncJob, utcnow
from mailsync.settings import Settings
from tests.support.api import Api, Tenant
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

    def post(self, body: Any, path: str = "/v1/push/microsoft") -> httpx.Response:
        return httpx.post(f"{self.api.url}{path}", json=body, timeout=30)

    def index_matches(self, fakes: FakeProviders, provider: str = "microsoft") -> bool:
        address = self.tenant.microsoft_address if provider == "microsoft" else ""
        address = address or self.tenant.gmail_address
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
