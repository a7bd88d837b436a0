"""Re-authorization through the real stack: a job triggered over the API (a Prefect flow run,
each mailbox a task) whose Gmail grant was revoked at the provider ends with that mailbox's
outcome provider_auth_failed while the other mailbox syncs; the mailbox is reauth_required
with one webhook event, and a sync of only it is 403."""

from __future__ import annotations

import httpx
from sqlmodel import Session, select

from mailsync.core import apikeys
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import Mailbox, WebhookEvent
from mailsync.orchestration import runtime
from tests.support.api import Api, Tenant
from tests.support.stack import FakeProviders


def test_a_revoked_grant_fails_only_its_mailbox_and_asks_for_consent(
    api: Api, tenant: Tenant, fakes: FakeProviders
) -> None:
    """The job fails with provider_auth_failed naming the Gmail mailbox; its entry for Gmail
    carries that error (no mode performed), Microsoft's a synced result; GET /v1/mailboxes
    shows Gmail reauth_required with that job and error, Microsoft active; exactly one
    mailbox.reauth_required event; a Gmail-only sync is then 403 (re-authorization)."""
    settings = api.stack.settings
    with Session(get_engine(settings.resolved_database_url)) as session:
        rows = session.exec(select(Mailbox).where(Mailbox.workspace_id == tenant.workspace_id))
        ids = {m.provider: m.id for m in rows}
    runtime.sync_now(ids["gmail"], "incremental", settings)  # it had synced before
    fakes.gmail.revoke(tenant.gmail_address)

    job = api.post(tenant, {})
    assert job.status_code == 202, job.text
    final = api.wait(tenant, job.json()["data"]["job_id"])
    assert final["status"] == "failed" and final["error"]["code"] == "provider_auth_failed"
    assert tenant.gmail_address in final["error"]["message"]
    entries = {m["provider"]: m for m in final["mailboxes"]}
    assert entries["gmail"]["error"]["code"] == "provider_auth_failed"
    assert entries["gmail"]["performed_mode"] is None
    assert (
        entries["microsoft"]["performed_mode"] == "full" and entries["microsoft"]["error"] is None
    )

    with session_scope(settings.resolved_database_url) as session:
        key = apikeys.create_api_key(session, tenant.workspace_id, ["read:mailboxes"])[1]
        events = session.exec(
            select(WebhookEvent).where(
                WebhookEvent.workspace_id == tenant.workspace_id,
                WebhookEvent.type == "mailbox.reauth_required",
            )
        ).all()
    assert len(events) == 1
    listed = httpx.get(f"{api.url}/v1/mailboxes", headers={"Authorization": f"Bearer {key}"})
    views = {m["provider"]: m for m in listed.json()["data"]}
    assert views["gmail"]["status"] == "reauth_required"
    assert views["gmail"]["last_job_id"] == final["job_id"]
    assert views["gmail"]["last_error"]["code"] == "provider_auth_failed"
    assert (views["microsoft"]["status"], views["microsoft"]["last_error"]) == ("active", None)

    refused = api.post(tenant, {"provider": "gmail"})
    assert refused.status_code == 403
    assert "re-authorization" in refused.json()["error"]["message"]
