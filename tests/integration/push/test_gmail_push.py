"""Gmail push end to end: users.watch through google-api-python-client -> the fake's Pub/Sub
push subscription POSTs with its OIDC token -> POST /v1/push/gmail on the real API verifies it
with google-auth -> a coalesced push job on the real Prefect stack -> the index."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailsync.core.push import channels
from mailsync.core.push.state import PushStatus
from mailsync.db.tables import utcnow
from tests.support.api import make_tenant
from tests.support.push import PUSH_ACCOUNT, PushApi, PushTenant
from tests.support.stack import FakeProviders
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def pushed(push_api: PushApi, fakes: FakeProviders) -> Iterator[PushTenant]:
    """A tenant with one Gmail mailbox, synced once, watched on the API's topic."""
    api, settings = push_api.api, push_api.settings
    tenant = make_tenant(settings, fakes, providers=("gmail",), messages=5)
    first = api.post(tenant, {})
    assert first.status_code == 202, first.text
    assert api.wait(tenant, first.json()["data"]["job_id"])["status"] == "completed"
    mailbox = PushTenant(api, tenant, settings, "").mailbox("gmail")
    report = channels.maintain(settings, workspaces=[tenant.workspace_id])
    assert report.counts() == {"opened": 1, "renewed": 0, "failed": 0}
    yield PushTenant(api, tenant, settings, mailbox.id)
    channels.stop(settings, mailbox)


def _watches(fakes: FakeProviders, address: str) -> list[str]:
    return [w.topic for w in fakes.gmail.pubsub().watches if w.address == address]


def _ended(push: PushTenant) -> bool:
    return bool(push.push_jobs()) and not push.open_push_jobs()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _forged(kid: str, claims: dict[str, object]) -> str:
    """An RS256 token with the fake's key id, signed by a key that is not the fake's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    head = {"alg": "RS256", "kid": kid, "typ": "JWT"}
    signing = ".".join(_b64url(json.dumps(p).encode()) for p in (head, claims))
    signature = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing}.{_b64url(signature)}"


def test_a_new_message_is_indexed_by_a_push_job(
    pushed: PushTenant, push_api: PushApi, fakes: FakeProviders
) -> None:
    """The watch is on the configured topic and push is active; a message added at the fake
    is pushed with a token that verifies, starts an incremental push job of that mailbox,
    and is in the index once it completes."""
    address = pushed.tenant.gmail_address
    assert _watches(fakes, address) == [push_api.topic]
    state = pushed.state()
    assert state.push is PushStatus.active and state.push_expires_at is not None
    assert state.push_expires_at - utcnow() > timedelta(days=6)
    fakes.gmail.add_messages(address, 1)
    eventually(lambda: _ended(pushed), "the push job to end", timeout=90)
    (job, *_) = pushed.push_jobs()
    view = pushed.api.get(pushed.tenant, job.id)
    assert view["status"] == "completed" and view["providers"] == ["gmail"]
    assert job.quota_lease_id is None
    eventually(lambda: pushed.index_matches(fakes, "gmail"), "the index to match")
    assert pushed.state().last_notification_at is not None


def test_refusals_get_401_and_start_nothing(
    pushed: PushTenant, push_api: PushApi, fakes: FakeProviders
) -> None:
    """No token, a token signed by another key, and the fake's genuine tokens for another
    audience or another service account all get 401 and start no job; once the push
    subscription is right again a push starts one."""
    address = pushed.tenant.gmail_address
    data = base64.b64encode(json.dumps({"emailAddress": address, "historyId": 1}).encode())
    body = {"message": {"data": data.decode(), "messageId": "1"}, "subscription": "s"}
    assert pushed.post(body, "/v1/push/gmail").status_code == 401
    kid = next(
        iter(httpx.get(f"{fakes.gmail_url}/oauth2/v1/certs", verify=str(fakes.ca_path)).json())
    )
    now = int(time.time())
    claims = {
        "aud": push_api.subscription.endpoint,
        "email": PUSH_ACCOUNT,
        "email_verified": True,
        "iss": "https://accounts.google.com",
        "iat": now,
        "exp": now + 600,
    }
    forged = pushed.post(body, "/v1/push/gmail", Authorization=f"Bearer {_forged(kid, claims)}")
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "invalid_push_token"
    spec = push_api.subscription
    before = fakes.gmail.pubsub().stats.statuses.get("401", 0)
    for wrong in (
        spec.model_copy(update={"audience": "https://elsewhere.example/v1/push/gmail"}),
        spec.model_copy(update={"service_account": "intruder@evil.iam.gserviceaccount.com"}),
    ):
        fakes.gmail.put_push_subscription(wrong)
        fakes.gmail.add_messages(address, 1)
        before += 1
        eventually(
            lambda n=before: fakes.gmail.pubsub().stats.statuses.get("401", 0) >= n,
            "the fake's push to be refused",
        )
    assert pushed.push_jobs() == []
    fakes.gmail.put_push_subscription(spec)
    fakes.gmail.add_messages(address, 1)
    eventually(lambda: _ended(pushed), "the push job to end", timeout=90)
    eventually(lambda: pushed.index_matches(fakes, "gmail"), "the index to match")


def test_watches_are_renewed_daily_and_stopped_on_disconnect(
    pushed: PushTenant, fakes: FakeProviders
) -> None:
    """A maintenance within a day of the watch renews nothing; one a day later watches
    again; stop calls users.stop (the fake drops the watch, publishes nothing more) and push
    is off."""
    workspace = [pushed.tenant.workspace_id]
    start = utcnow()
    soon = channels.maintain(pushed.settings, lambda: start + timedelta(hours=23), workspace)
    assert soon.counts()["renewed"] == 0
    later = channels.maintain(
        pushed.settings, lambda: start + timedelta(days=1, minutes=1), workspace
    )
    assert later.counts() == {"opened": 0, "renewed": 1, "failed": 0}
    renewed_at = pushed.row().renewed_at
    assert renewed_at is not None and renewed_at.replace(tzinfo=None) > start.replace(tzinfo=None)
    address = pushed.tenant.gmail_address
    assert channels.stop(pushed.settings, pushed.mailbox("gmail"))
    assert _watches(fakes, address) == []
    assert pushed.state().push is PushStatus.off
    published = fakes.gmail.pubsub().stats.published
    fakes.gmail.add_messages(address, 1)
    assert fakes.gmail.pubsub().stats.published == published


def test_dropped_and_duplicated_pushes_leave_the_index_exact(
    pushed: PushTenant, fakes: FakeProviders
) -> None:
    """A dropped push starts nothing; the next push's sync indexes both changes; a pushed
    twice message is harmless."""
    address = pushed.tenant.gmail_address
    fakes.gmail.control_pushes(drop=1)
    fakes.gmail.add_messages(address, 1)
    fakes.gmail.control_pushes(duplicate=1)
    fakes.gmail.add_messages(address, 1)
    eventually(lambda: _ended(pushed), "the push job to end", timeout=90)
    eventually(lambda: pushed.index_matches(fakes, "gmail"), "the index to match", 60)
    assert fakes.gmail.pubsub().stats.dropped >= 1
