"""GET/DELETE /v1/mailboxes over mailboxes connected to the fakes and synced with the real
client libraries, on SQLite and PostgreSQL: the fields, disconnecting (revocation at Google,
the index gone, 409 while a sync runs), and re-authorization after a revocation at the
provider (reauth_required, one webhook event, skipped by refreshes, 403 on a sync)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from google.oauth2.credentials import Credentials
from sqlmodel import Session, col, func, select

from mailsync.api.app import create_app
from mailsync.core import apikeys, workspaces
from mailsync.core.jobs import store as jobstore
from mailsync.core.jobs.contract import JobRef, MailboxRef
from mailsync.core.jobs.outcomes import job_end
from mailsync.core.schedule import refresh
from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, Message, SyncJob, WebhookEvent, utcnow
from mailsync.errors import ReauthRequiredError
from mailsync.orchestration import runtime
from mailsync.settings import Settings
from mailsync.webhooks.store import MAILBOX_REAUTH_REQUIRED
from tests.support.api import ManualClock, Tenant, make_tenant
from tests.support.receiver import finish_job, running_job
from tests.support.stack import FakeProviders

URL = "/v1/mailboxes"
FIELDS = {
    "id", "provider", "address", "status", "connected_at", "last_synced_at", "last_job_id",
    "last_error", "message_count", "lag_seconds", "push", "push_expires_at",
    "last_notification_at",
}  # fmt: skip


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def client(settings: Settings, clock: ManualClock) -> Iterator[TestClient]:
    """The real app (Prefect unreachable: nothing here needs it) on a movable clock."""
    local = settings.model_copy(update={"prefect_api_url": "http://127.0.0.1:9/api"})
    with TestClient(create_app(local, now=clock), raise_server_exceptions=False) as c:
        yield c


def keys(settings: Settings, workspace_id: str) -> dict[str, dict[str, str]]:
    with session_scope(settings.resolved_database_url) as session:
        made = {
            scope: apikeys.create_api_key(session, workspace_id, [scope])[1]
            for scope in ("read:mailboxes", "write:mailboxes", "read:email", "write:email")
        }
    return {scope: {"Authorization": f"Bearer {key}"} for scope, key in made.items()}


def delegated_tenant(settings: Settings, fakes: FakeProviders) -> Tenant:
    """A Gmail mailbox and a Microsoft one connected with its user's own refresh token."""
    tenant = make_tenant(settings, fakes)
    account = fakes.microsoft.create_mailbox(tenant.microsoft_address)
    with session_scope(settings.resolved_database_url) as session:
        workspaces.connect_mailbox(
            session, CredentialBox(settings.fernet_key()), tenant.workspace_id, "microsoft",
            tenant.microsoft_address, account.provider_credentials("delegated"),
        )  # fmt: skip
    return tenant


def mailbox_ids(settings: Settings, workspace_id: str) -> dict[str, str]:
    with Session(get_engine(settings.resolved_database_url)) as session:
        rows = session.exec(select(Mailbox).where(Mailbox.workspace_id == workspace_id))
        return {m.provider: m.id for m in rows}


def stored(settings: Settings, mailbox_id: str) -> Mailbox:
    with Session(get_engine(settings.resolved_database_url)) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox is not None
        return mailbox


def indexed(settings: Settings, mailbox_id: str) -> int:
    with Session(get_engine(settings.resolved_database_url)) as session:
        query = select(func.count()).select_from(Message).where(Message.mailbox_id == mailbox_id)
        return int(session.exec(query).one())


def reauth_events(settings: Settings, workspace_id: str) -> list[dict[str, Any]]:
    with Session(get_engine(settings.resolved_database_url)) as session:
        rows = session.exec(
            select(WebhookEvent).where(
                WebhookEvent.workspace_id == workspace_id,
                WebhookEvent.type == MAILBOX_REAUTH_REQUIRED,
            )
        )
        return [r.payload for r in rows]


def test_list_and_get_show_each_mailboxs_state(
    client: TestClient, settings: Settings, fakes: FakeProviders, clock: ManualClock
) -> None:
    """Both mailboxes are listed with exactly the documented fields: active, never synced
    (no lag, no messages); after a real sync, message_count is what the index holds and
    lag_seconds is the API clock minus the sync's time; a read:mailboxes key suffices, an
    email key does not, and an unknown id is 404 in the error envelope. Push is off where
    no channel was opened (tests/integration/push show it active)."""
    tenant = make_tenant(settings, fakes, messages=7)
    auth = keys(settings, tenant.workspace_id)
    listed = client.get(URL, headers=auth["read:mailboxes"])
    assert listed.status_code == 200, listed.text
    data = listed.json()["data"]
    assert [set(m) for m in data] == [FIELDS, FIELDS]
    assert {(m["provider"], m["address"]) for m in data} == {
        ("gmail", tenant.gmail_address),
        ("microsoft", tenant.microsoft_address),
    }
    for m in data:
        assert m["status"] == "active" and m["connected_at"]
        assert (m["last_synced_at"], m["lag_seconds"], m["message_count"]) == (None, None, 0)
        assert (m["last_job_id"], m["last_error"]) == (None, None)
        assert (m["push"], m["push_expires_at"], m["last_notification_at"]) == ("off", None, None)

    gmail_id = mailbox_ids(settings, tenant.workspace_id)["gmail"]
    runtime.sync_now(gmail_id, "incremental", settings)
    clock.offset = timedelta(minutes=5)
    got = client.get(f"{URL}/{gmail_id}", headers=auth["write:mailboxes"]).json()["data"]
    assert got["message_count"] == indexed(settings, gmail_id) == 7
    assert got["last_synced_at"] is not None
    assert 295 <= got["lag_seconds"] <= 360

    denied = client.get(URL, headers=auth["read:email"])
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "insufficient_permissions"
    missing = client.get(f"{URL}/mbx_nope", headers=auth["read:mailboxes"])
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_a_jobs_end_is_each_mailboxs_last_job_and_error(
    client: TestClient, settings: Settings, fakes: FakeProviders
) -> None:
    """When a job ends, every mailbox it covered shows it as last_job_id; the one that failed
    shows the job error's code and message, the one that synced none; the job's own entry for
    the failed mailbox says provider_auth_failed (no mode performed)."""
    tenant = make_tenant(settings, fakes, messages=2)
    ids = mailbox_ids(settings, tenant.workspace_id)
    url = settings.resolved_database_url
    job_id = running_job(url, tenant.workspace_id)
    ok = runtime.sync_now(ids["gmail"], "incremental", settings)
    refs = (
        MailboxRef(ids["gmail"], "gmail", tenant.gmail_address),
        MailboxRef(ids["microsoft"], "microsoft", tenant.microsoft_address),
    )
    job = JobRef(job_id, tenant.workspace_id, ("gmail", "microsoft"), "incremental", refs)
    runtime.close_jobs([job_end(job, [ok, ReauthRequiredError("token refused")])], settings)
    with Session(get_engine(settings.resolved_database_url)) as session:
        ended = session.get(SyncJob, job_id)
        assert ended is not None and ended.error_code == "provider_auth_failed"
        entries = {m["provider"]: m for m in ended.mailboxes}
    assert entries["gmail"]["performed_mode"] == "full" and "error" not in entries["gmail"]
    assert entries["microsoft"]["performed_mode"] is None
    assert entries["microsoft"]["error"]["code"] == "provider_auth_failed"
    auth = keys(settings, tenant.workspace_id)["read:mailboxes"]
    views = {m["provider"]: m for m in client.get(URL, headers=auth).json()["data"]}
    assert views["gmail"]["last_job_id"] == views["microsoft"]["last_job_id"] == job_id
    assert views["gmail"]["last_error"] is None
    error = views["microsoft"]["last_error"]
    assert error["code"] == "provider_auth_failed" and "token refused" in error["message"]


def test_disconnect_revokes_at_google_and_deletes_credentials_and_index(
    client: TestClient, settings: Settings, fakes: FakeProviders
) -> None:
    """DELETE answers the mailbox as `disconnected`; its refresh token no longer refreshes at
    Google (revoked through the fake's /revoke), its credentials, token state, cursor and
    every indexed message are gone, a sync of its provider is 403, and it stays listed. A
    Microsoft mailbox (no revocation endpoint) is disconnected the same way. Connecting the
    address again makes the same mailbox active."""
    tenant = make_tenant(settings, fakes, messages=4)
    ids = mailbox_ids(settings, tenant.workspace_id)
    for mailbox_id in ids.values():
        runtime.sync_now(mailbox_id, "incremental", settings)
    box = CredentialBox(settings.fernet_key())
    sealed = stored(settings, ids["gmail"]).credentials_encrypted
    assert sealed is not None
    credentials = box.open(sealed)
    auth = keys(settings, tenant.workspace_id)

    gone = client.delete(f"{URL}/{ids['gmail']}", headers=auth["write:mailboxes"])
    assert gone.status_code == 200, gone.text
    assert gone.json()["data"]["status"] == "disconnected"
    assert gone.json()["data"]["message_count"] == 0
    google = Credentials(
        None,
        refresh_token=credentials["refresh_token"],
        token_uri=settings.google_token_uri,
        client_id=credentials["client_id"],
        client_secret=credentials["client_secret"],
    )
    session = Request()
    session.session.trust_env = False  # REQUESTS_CA_BUNDLE would replace `verify`
    session.session.verify = str(settings.provider_ca_bundle)
    with pytest.raises(RefreshError, match="invalid_grant"):
        google.refresh(session)
    row = stored(settings, ids["gmail"])
    assert (row.credentials_encrypted, row.auth_state_encrypted, row.cursor) == ("", None, None)
    assert indexed(settings, ids["gmail"]) == 0

    sync = client.post("/v1/email/sync", json={"provider": "gmail"}, headers=auth["write:email"])
    assert sync.status_code == 403 and sync.json()["error"]["code"] == "insufficient_permissions"
    refused = client.delete(f"{URL}/{ids['gmail']}", headers=auth["read:mailboxes"])
    assert refused.status_code == 403

    other = client.delete(f"{URL}/{ids['microsoft']}", headers=auth["write:mailboxes"])
    assert other.json()["data"]["status"] == "disconnected"
    listed = client.get(URL, headers=auth["read:mailboxes"]).json()["data"]
    statuses = {m["id"]: m["status"] for m in listed}
    assert statuses == {ids["gmail"]: "disconnected", ids["microsoft"]: "disconnected"}

    account = fakes.gmail.create_mailbox(tenant.gmail_address)
    with session_scope(settings.resolved_database_url) as s:
        again, created = workspaces.connect_mailbox(
            s, box, tenant.workspace_id, "gmail", tenant.gmail_address,
            account.provider_credentials(),
        )  # fmt: skip
        assert (again.id, created, again.status) == (ids["gmail"], False, "active")
    runtime.sync_now(ids["gmail"], "incremental", settings)
    assert indexed(settings, ids["gmail"]) == 4


def test_disconnect_is_409_while_a_sync_of_the_mailbox_runs(
    client: TestClient, settings: Settings, fakes: FakeProviders
) -> None:
    """While a job of the mailbox's workspace and provider is open, DELETE is 409
    sync_in_progress naming it, and nothing is deleted; once it ended, DELETE succeeds."""
    tenant = make_tenant(settings, fakes, providers=("gmail",), messages=3)
    mailbox_id = mailbox_ids(settings, tenant.workspace_id)["gmail"]
    runtime.sync_now(mailbox_id, "incremental", settings)
    job_id = running_job(settings.resolved_database_url, tenant.workspace_id)
    auth = keys(settings, tenant.workspace_id)["write:mailboxes"]
    busy = client.delete(f"{URL}/{mailbox_id}", headers=auth)
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["code"] == "sync_in_progress"
    assert busy.json()["error"]["job_id"] == job_id
    assert stored(settings, mailbox_id).status == "active" and indexed(settings, mailbox_id) == 3
    finish_job(settings.resolved_database_url, job_id)
    assert client.delete(f"{URL}/{mailbox_id}", headers=auth).status_code == 200


@pytest.mark.parametrize("provider", ["gmail", "microsoft"])
def test_a_revoked_grant_makes_the_mailbox_reauth_required_once(
    client: TestClient, settings: Settings, fakes: FakeProviders, provider: str
) -> None:
    """After the user revokes the grant at the provider, the next sync (the real client
    library refreshing against the fake) fails with provider_auth_failed and the mailbox is
    reauth_required, with one mailbox.reauth_required event; another attempt adds no event
    and asks the provider nothing; refresh rounds leave it out; a sync of only that provider
    is 403 saying re-authorization is needed, while the workspace's other mailbox still syncs.
    Re-connecting makes it active again, with the same id."""
    tenant = delegated_tenant(settings, fakes)
    ids = mailbox_ids(settings, tenant.workspace_id)
    address = tenant.gmail_address if provider == "gmail" else tenant.microsoft_address
    runtime.sync_now(ids[provider], "incremental", settings)
    fakes.admin(provider).revoke(address)
    fakes.admin(provider).reset_stats()

    with pytest.raises(ReauthRequiredError) as failed:
        runtime.sync_now(ids[provider], "incremental", settings)
    assert failed.value.code == "provider_auth_failed"
    row = stored(settings, ids[provider])
    assert (row.status, row.last_error_code) == ("reauth_required", "provider_auth_failed")
    events = reauth_events(settings, tenant.workspace_id)
    assert len(events) == 1 and events[0]["data"]["mailbox"]["id"] == ids[provider]
    assert events[0]["data"]["mailbox"]["status"] == "reauth_required"

    asked = sum(fakes.admin(provider).stats().values())
    with pytest.raises(ReauthRequiredError):
        runtime.sync_now(ids[provider], "incremental", settings)
    assert sum(fakes.admin(provider).stats().values()) == asked
    assert len(reauth_events(settings, tenant.workspace_id)) == 1

    with session_scope(settings.resolved_database_url) as session:
        later = utcnow() + timedelta(days=1)
        due = refresh.due_mailboxes(session, later, 300, [tenant.workspace_id])
        assert [m.id for m in due] == [ids[p] for p in sorted(ids) if p != provider]

    auth = keys(settings, tenant.workspace_id)
    view = client.get(f"{URL}/{ids[provider]}", headers=auth["read:mailboxes"]).json()["data"]
    assert view["status"] == "reauth_required"
    only = client.post("/v1/email/sync", json={"provider": provider}, headers=auth["write:email"])
    assert only.status_code == 403, only.text
    assert only.json()["error"]["code"] == "insufficient_permissions"
    assert "re-authorization" in only.json()["error"]["message"]
    with session_scope(settings.resolved_database_url) as session:
        job = jobstore.build_job(session, tenant.workspace_id, "incremental", None)
        assert job.providers == [p for p in ("gmail", "microsoft") if p != provider]

    fresh = fakes.admin(provider).create_mailbox(address)
    kind = {"kind": "delegated"} if provider == "microsoft" else {}
    with session_scope(settings.resolved_database_url) as session:
        again, _ = workspaces.connect_mailbox(
            session, CredentialBox(settings.fernet_key()), tenant.workspace_id, provider,
            address, fresh.provider_credentials(**kind),  # type: ignore[arg-type]
        )  # fmt: skip
        assert (again.id, again.status) == (ids[provider], "active")
    runtime.sync_now(ids[provider], "incremental", settings)
    assert stored(settings, ids[provider]).status == "active"


def test_open_jobs_of_other_providers_do_not_block_a_disconnect(
    client: TestClient, settings: Settings, fakes: FakeProviders
) -> None:
    """An open job of the workspace's other provider is not a sync of this mailbox."""
    tenant = make_tenant(settings, fakes, messages=1)
    ids = mailbox_ids(settings, tenant.workspace_id)
    running_job(settings.resolved_database_url, tenant.workspace_id)  # gmail only
    auth = keys(settings, tenant.workspace_id)["write:mailboxes"]
    assert client.delete(f"{URL}/{ids['gmail']}", headers=auth).status_code == 409
    assert client.delete(f"{URL}/{ids['microsoft']}", headers=auth).status_code == 200
    with Session(get_engine(settings.resolved_database_url)) as session:
        open_jobs = session.exec(
            select(SyncJob).where(
                SyncJob.workspace_id == tenant.workspace_id, col(SyncJob.status) == "running"
            )
        )
        assert len(list(open_jobs)) == 1
