"""Microsoft push end to end: the fake Graph's subscriptions and notifications -> POST
/v1/push/microsoft on the real API -> a coalesced push job on the real Prefect stack -> the
index. Subscriptions are made through mailsync's own GraphSubscriptions (msal + httpx)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest

from mailsync.core import apikeys
from mailsync.core.push import channels, graph_channels
from mailsync.core.push.state import PushStatus
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import JobStatus, utcnow
from tests.support.api import make_tenant
from tests.support.index import live_index
from tests.support.push import PushApi, PushTenant, notification
from tests.support.stack import FakeProviders
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def pushed(push_api: PushApi, fakes: FakeProviders) -> Iterator[PushTenant]:
    """A tenant with one Microsoft mailbox, synced once, whose subscription is open."""
    api, settings = push_api.api, push_api.settings
    tenant = make_tenant(settings, fakes, providers=("microsoft",), messages=5)
    first = api.post(tenant, {})
    assert first.status_code == 202, first.text
    assert api.wait(tenant, first.json()["data"]["job_id"])["status"] == "completed"
    mailbox = PushTenant(api, tenant, settings, "").mailbox()
    report = channels.maintain(settings, workspaces=[tenant.workspace_id])
    assert report.counts() == {"opened": 1, "renewed": 0, "failed": 0}
    yield PushTenant(api, tenant, settings, mailbox.id)
    channels.stop(settings, mailbox)


def _ended(push: PushTenant) -> bool:
    return bool(push.push_jobs()) and not push.open_push_jobs()


def test_a_new_message_is_indexed_by_a_push_job(pushed: PushTenant, fakes: FakeProviders) -> None:
    """The subscription points at our API and is active; a message added at the fake is
    notified, starts an incremental job of that one mailbox with trigger push (readable by
    the API, no quota slot), and is in the index when it completes."""
    (subscription,) = fakes.microsoft.subscriptions(pushed.tenant.microsoft_address)
    assert subscription.notification_url == f"{pushed.api.url}/v1/push/microsoft"
    assert subscription.lifecycle_url == f"{pushed.api.url}/v1/push/microsoft/lifecycle"
    assert pushed.state().push is PushStatus.active
    (added,) = fakes.microsoft.add_messages(pushed.tenant.microsoft_address, 1)
    eventually(lambda: _ended(pushed), "the push job to end", timeout=90)
    jobs = pushed.push_jobs()
    assert all(j.mode == "incremental" and j.quota_lease_id is None for j in jobs)
    view = pushed.api.get(pushed.tenant, jobs[0].id)
    assert view["status"] == "completed" and view["providers"] == ["microsoft"]
    assert [m["address"] for m in view["mailboxes"]] == [pushed.tenant.microsoft_address]
    eventually(lambda: pushed.index_matches(fakes), "the index to match")
    assert added in live_index(pushed.stack, pushed.tenant, "microsoft")
    assert pushed.state().last_notification_at is not None


def test_refusals_get_401_and_start_nothing(pushed: PushTenant) -> None:
    """A wrong, missing or another mailbox's clientState, or the right one under another
    subscription id, gets 401 (a batch with one bad item too) and no job; a body that is not
    Graph's shape gets 400; the validation handshake echoes its token as text/plain."""
    row = pushed.row()
    assert row.channel_id is not None
    good = pushed.client_state()
    before = len(pushed.push_jobs())
    bad = [
        notification(row.channel_id, good[:-1] + ("x" if good[-1] != "x" else "y")),
        notification(row.channel_id, None),
        notification(row.channel_id, "mbx_unknown.secret"),
        notification("another-subscription", good),
        {"value": notification(row.channel_id, good)["value"] * 2 + [{"subscriptionId": "s"}]},
    ]
    for body in bad:
        response = pushed.post(body)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_client_state"
    for body in ({"value": "x"}, [1], {"nothing": []}):
        assert pushed.post(body).status_code == 400
    echo = pushed.api.url + "/v1/push/microsoft/lifecycle?validationToken=abc%3D%3D"
    answer = httpx.post(echo, content=b"", timeout=10)
    assert answer.status_code == 200 and answer.text == "abc=="
    assert answer.headers["content-type"].startswith("text/plain")
    assert len(pushed.push_jobs()) == before


def test_a_burst_of_concurrent_notifications_is_coalesced(
    pushed: PushTenant, fakes: FakeProviders
) -> None:
    """40 concurrent genuine notifications while a push sync is held mid-way: one job holds
    the mailbox's turn, one more is queued, none else is made; once released, both end and
    the index is exact."""
    address = pushed.tenant.microsoft_address
    row = pushed.row()
    assert row.channel_id is not None
    body = notification(row.channel_id, pushed.client_state())
    fakes.microsoft.hold_delta(address, "inbox")
    try:
        fakes.microsoft.add_messages(address, 1)
        first = eventually(
            lambda: [j for j in pushed.push_jobs() if j.status == JobStatus.running.value],
            "a push job to hold the mailbox's turn",
            timeout=60,
        )
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: pushed.post(body), range(40)))
        assert {a.status_code for a in answers} == {202}
        fakes.microsoft.add_messages(address, 2)
        open_jobs = pushed.open_push_jobs()
        assert len(open_jobs) == 2, [(j.id, j.status) for j in open_jobs]
        assert [j.status for j in open_jobs].count(JobStatus.queued.value) == 1
        assert open_jobs[0].id == first[0].id
    finally:
        fakes.microsoft.release_delta(address, "inbox")
    eventually(lambda: not pushed.open_push_jobs(), "the push jobs to end", timeout=90)
    assert len(pushed.push_jobs()) <= 3  # the held one, the queued one, one after it at most
    assert all(j.status == "completed" for j in pushed.push_jobs())
    eventually(lambda: pushed.index_matches(fakes), "the index to match")


def test_lifecycle_events(pushed: PushTenant, fakes: FakeProviders) -> None:
    """missed starts a sync; reauthorizationRequired makes the next maintenance renew it;
    subscriptionRemoved starts a sync, shows push expired, and the next maintenance makes a
    new subscription (push active again)."""
    workspace = [pushed.tenant.workspace_id]
    (subscription,) = fakes.microsoft.subscriptions(pushed.tenant.microsoft_address)
    fakes.microsoft.lifecycle(subscription.id, "missed")
    eventually(lambda: _ended(pushed), "the missed event's sync to end", timeout=90)
    fakes.microsoft.lifecycle(subscription.id, "reauthorizationRequired")
    eventually(lambda: pushed.row().renewed_at is None, "the renewal to be due")
    report = channels.maintain(pushed.settings, workspaces=workspace)
    assert report.counts() == {"opened": 0, "renewed": 1, "failed": 0}
    syncs = len(pushed.push_jobs())
    fakes.microsoft.lifecycle(subscription.id, "subscriptionRemoved")
    eventually(lambda: pushed.state().push is PushStatus.expired, "push to show expired")
    eventually(lambda: len(pushed.push_jobs()) > syncs, "the removal's sync")
    report = channels.maintain(pushed.settings, workspaces=workspace)
    assert report.counts() == {"opened": 1, "renewed": 0, "failed": 0}
    (renewed,) = fakes.microsoft.subscriptions(pushed.tenant.microsoft_address)
    assert renewed.id != subscription.id and pushed.row().channel_id == renewed.id
    assert pushed.state().push is PushStatus.active


def test_renewal_comes_well_before_expiry(pushed: PushTenant, fakes: FakeProviders) -> None:
    """With 120-minute subscriptions renewed once under 60 minutes are left, a maintenance
    at +59 min renews nothing, one at +61 min renews (PATCH: same id, later expiry at Graph
    and in the push state)."""
    settings = pushed.settings.model_copy(
        update={
            "microsoft_subscription_minutes": 120,
            "microsoft_subscription_renew_before_minutes": 60,
        }
    )
    box = CredentialBox(settings.fernet_key())
    graph_channels.ensure(settings, box, pushed.mailbox())  # now a 120-minute one
    start = utcnow()
    workspace = [pushed.tenant.workspace_id]
    early = channels.maintain(settings, lambda: start + timedelta(minutes=59), workspace)
    assert early.counts()["renewed"] == 0
    late = channels.maintain(settings, lambda: start + timedelta(minutes=61), workspace)
    assert late.counts() == {"opened": 0, "renewed": 1, "failed": 0}
    (subscription,) = fakes.microsoft.subscriptions(pushed.tenant.microsoft_address)
    assert subscription.id == pushed.row().channel_id
    assert subscription.expiration - start > timedelta(minutes=180)
    expires = pushed.state().push_expires_at
    assert expires is not None and abs((expires - subscription.expiration).total_seconds()) < 1


def test_disconnect_stops_the_subscription(pushed: PushTenant, fakes: FakeProviders) -> None:
    """GET /v1/mailboxes/{id} shows the open subscription; DELETE deletes it at Graph (before
    the grant is forgotten) and turns push off; the old subscription's notifications are
    then refused."""
    row = pushed.row()
    old_state = pushed.client_state()
    with session_scope(pushed.settings.resolved_database_url) as session:
        key = apikeys.create_api_key(session, pushed.tenant.workspace_id, ["write:mailboxes"])[1]
    url = f"{pushed.api.url}/v1/mailboxes/{pushed.mailbox_id}"
    auth = {"Authorization": f"Bearer {key}"}
    shown = httpx.get(url, headers=auth, timeout=30).json()["data"]
    assert (shown["push"], shown["push_expires_at"] is not None) == ("active", True)
    gone = httpx.delete(url, headers=auth, timeout=60)
    assert gone.status_code == 200, gone.text
    assert (gone.json()["data"]["status"], gone.json()["data"]["push"]) == ("disconnected", "off")
    assert fakes.microsoft.subscriptions(pushed.tenant.microsoft_address) == []
    assert pushed.state().push is PushStatus.off
    assert row.channel_id is not None
    assert pushed.post(notification(row.channel_id, old_state)).status_code == 401


def test_duplicated_and_dropped_notifications_leave_the_index_exact(
    pushed: PushTenant, fakes: FakeProviders
) -> None:
    """A dropped notification starts nothing; the next change's sync indexes both changes.
    A duplicated one is harmless: the index is exact either way."""
    address = pushed.tenant.microsoft_address
    stats = fakes.microsoft.notification_stats()
    fakes.microsoft.control_notifications(drop=1)
    fakes.microsoft.add_messages(address, 1)
    after = fakes.microsoft.notification_stats()
    assert after.dropped == stats.dropped + 1
    fakes.microsoft.control_notifications(duplicate=1)
    fakes.microsoft.add_messages(address, 1)
    eventually(
        lambda: fakes.microsoft.notification_stats().duplicated > stats.duplicated,
        "the duplicate",
    )
    eventually(lambda: _ended(pushed) and pushed.index_matches(fakes), "the index to match", 90)
