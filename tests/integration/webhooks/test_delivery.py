"""Delivery in-process against a real local receiver that verifies every signature:
retries until a 2xx, exactly once, even after a crash; SSRF rechecked at send time."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from mailsync.settings import Settings
from mailsync.webhooks import delivery, dispatch, outbox, store
from mailsync.webhooks.signing import generate_secret, verify
from tests.support.receiver import (
    Receiver,
    finish_job,
    new_endpoint,
    new_workspace,
    running_job,
    webhook_settings,
)


@pytest.fixture
def settings(unshared_database_url: str, tmp_path: Path) -> Settings:
    """Deliveries are run by hand here: no Prefect stack's delivery run shares the rows."""
    return webhook_settings(unshared_database_url, tmp_path)


def job_delivery(settings: Settings, job_id: str) -> WebhookDelivery:
    with Session(get_engine(settings.resolved_database_url)) as session:
        event = session.exec(select(WebhookEvent).where(WebhookEvent.subject_id == job_id)).one()
        return session.exec(
            select(WebhookDelivery).where(WebhookDelivery.event_id == event.id)
        ).one()


def attempt_codes(settings: Settings, delivery_id: str) -> list[int | None]:
    with Session(get_engine(settings.resolved_database_url)) as session:
        query = select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
        return [a.status_code for a in session.exec(query.order_by(WebhookAttempt.id))]  # type: ignore[arg-type]


def drain(settings: Settings, receiver: Receiver, accepted: int = 1, seconds: float = 5) -> None:
    """Run delivery rounds as the flow would until the receiver accepted that many, then
    a little longer, so that a duplicate would show."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(receiver.accepted) < accepted:
        dispatch.deliver_due(settings)
        time.sleep(0.02)
    for _ in range(5):
        time.sleep(0.05)
        dispatch.deliver_due(settings)


def test_receiver_down_then_up_gets_the_event_exactly_once(
    settings: Settings, receiver: Receiver
) -> None:
    """A receiver answering 503 three times then 200 gets one accepted delivery; every
    attempt carries the same webhook-id (the event id) and a valid signature, and the log
    shows the four attempts with their status codes."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    endpoint, receiver.secret = new_endpoint(settings, workspace, receiver.url)
    receiver.fail_first = 3
    job_id = running_job(url, workspace)
    finish_job(url, job_id)
    row = job_delivery(settings, job_id)
    drain(settings, receiver)
    assert [r.answered for r in receiver.requests] == [503, 503, 503, 200]
    assert all(r.verified for r in receiver.requests)
    assert {r.webhook_id for r in receiver.requests} == {row.event_id}
    [accepted] = receiver.accepted
    assert accepted.body is not None and accepted.body["data"]["job_id"] == job_id
    assert accepted.body["type"] == "email.sync.completed"
    assert attempt_codes(settings, row.id) == [503, 503, 503, 200]
    final = job_delivery(settings, job_id)
    assert (final.status, final.attempts, final.last_status_code) == ("delivered", 4, 200)
    with Session(get_engine(url)) as session:
        ep = session.get(WebhookEndpoint, endpoint.id)
        assert ep is not None and ep.failing_since is None


def test_an_event_left_by_a_killed_process_is_delivered_once(
    settings: Settings, receiver: Receiver
) -> None:
    """Killed after the job's end (nothing kicked delivery) or mid-attempt (the claim is held):
    a later run delivers the event once, when the claim has lapsed, and never again."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    _, receiver.secret = new_endpoint(settings, workspace, receiver.url)
    job_id = running_job(url, workspace)
    finish_job(url, job_id)  # ... and the process dies here
    row = job_delivery(settings, job_id)
    with session_scope(url) as session:  # a run claimed it and died before sending
        assert outbox.claim(session, row.id, outbox.utcnow(), hold_seconds=3600)
    # Other tests' deliveries share the database: only this one must be left alone.
    assert row.id not in {d["delivery_id"] for d in dispatch.deliver_due(settings)}
    # The claim's hour passes (its hold is the row's next attempt time): no real wait.
    with session_scope(url) as session:
        held = session.get(WebhookDelivery, row.id)
        assert held is not None
        held.next_attempt_at = outbox.utcnow() - timedelta(seconds=1)
        session.add(held)
    drain(settings, receiver)
    assert [r.answered for r in receiver.requests] == [200]
    assert receiver.requests[0].webhook_id == row.event_id


def test_replay_resends_with_the_same_webhook_id(settings: Settings, receiver: Receiver) -> None:
    """A replay sends the delivered event again under the same webhook-id, so receivers that
    dedupe on it process it once."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    _, receiver.secret = new_endpoint(settings, workspace, receiver.url)
    job_id = running_job(url, workspace)
    finish_job(url, job_id)
    drain(settings, receiver)
    with session_scope(url) as session:
        row = session.get(WebhookDelivery, job_delivery(settings, job_id).id)
        assert row is not None
        outbox.replay(session, row, settings.webhook_retry_horizon_seconds)
    drain(settings, receiver, accepted=2)
    ids = [r.webhook_id for r in receiver.accepted]
    assert len(ids) == 2 and len(set(ids)) == 1


def test_during_rotation_receivers_with_old_or_new_secret_both_verify(
    settings: Settings, receiver: Receiver
) -> None:
    """After a rotation with overlap, deliveries carry both signatures; with no overlap only
    the new secret verifies."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    endpoint, old = new_endpoint(settings, workspace, receiver.url)
    box = CredentialBox(settings.fernet_key())
    with session_scope(url) as session:
        row = session.get(WebhookEndpoint, endpoint.id)
        assert row is not None
        new = store.rotate_secret(session, box, row, overlap_seconds=3600)
        assert store.signing_secrets(box, row) == [new, old]
    receiver.secret = old
    job_id = running_job(url, workspace)
    finish_job(url, job_id)
    drain(settings, receiver)
    [received] = receiver.accepted
    assert verify(new, received.headers, received.raw) == received.webhook_id
    with session_scope(url) as session:
        row = session.get(WebhookEndpoint, endpoint.id)
        assert row is not None
        newest = store.rotate_secret(session, box, row, overlap_seconds=0)
        assert store.signing_secrets(box, row) == [newest]


def test_dns_is_vetted_again_at_delivery_time(settings: Settings, receiver: Receiver) -> None:
    """A host that resolved publicly at creation but now resolves to a private address is not
    called: the attempt is logged as refused and retried later."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    new_endpoint(settings, workspace, "https://hooks.example.com/in")
    job_id = running_job(url, workspace)
    finish_job(url, job_id)
    row = job_delivery(settings, job_id)
    dispatch.deliver_one(row.id, settings, resolver=lambda host, port: ["10.0.0.7"])
    with Session(get_engine(url)) as session:
        [attempt] = session.exec(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == row.id)
        ).all()
    assert attempt.status_code is None and attempt.error and "private" in attempt.error
    assert job_delivery(settings, job_id).status == "pending"


def outgoing() -> delivery.Outgoing:
    return delivery.Outgoing(
        "whd_1", "msg_1", "https://hooks.example.com/in?token=s3cr3t", b"{}", [generate_secret()]
    )


def public(host: str, port: int) -> list[str]:
    return ["93.184.215.14"]


def test_an_attempt_is_pinned_signed_and_follows_no_redirect() -> None:
    """The request goes to the vetted address with the registered Host, Standard Webhooks
    headers and the exact body; a redirect is a failed attempt, not followed."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"location": "http://169.254.169.254/"})

    message = outgoing()
    result = delivery.send(
        message, timeout=1, resolver=public, transport=httpx.MockTransport(answer)
    )
    assert (result.ok, result.status_code, result.error) == (False, 302, "HTTP 302")
    [request] = seen
    assert request.url.host == "93.184.215.14" and request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert verify(message.secrets[0], dict(request.headers), request.content) == "msg_1"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ReadTimeout("timed out"), "timed out after 1 s"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "ConnectError"),
    ],
)
def test_network_errors_are_logged_briefly_without_url_or_secret(
    error: Exception, expected: str
) -> None:
    """Timeouts and refused connections become a short error text; the URL (and its query
    token) and the signing secret never appear in it."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    message = outgoing()
    result = delivery.send(message, timeout=1, resolver=public, transport=httpx.MockTransport(fail))
    assert result.status_code is None and result.error and expected in result.error
    assert "s3cr3t" not in result.error and message.secrets[0] not in result.error


def test_deleted_endpoint_deliveries_are_skipped(settings: Settings) -> None:
    """Deleting an endpoint removes its deliveries and log; nothing is sent afterwards."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    endpoint, _ = new_endpoint(settings, workspace, "https://hooks.example.com/in")
    job_id = running_job(url, workspace)
    finish_job(url, job_id)
    with session_scope(url) as session:
        row = session.get(WebhookEndpoint, endpoint.id)
        assert row is not None
        store.delete_endpoint(session, row)
    with Session(get_engine(url)) as session:
        assert (
            session.exec(
                select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
            ).all()
            == []
        )
