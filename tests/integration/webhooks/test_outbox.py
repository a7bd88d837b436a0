"""The outbox: events commit with the job's end, deliveries are claimed once, retried with
backoff over a horizon, and an endpoint failing for days is disabled with a notice."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from mailsync.core.jobs import store as jobstore
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import (
    JobStatus,
    SyncJob,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    as_utc,
    utcnow,
)
from mailsync.settings import Settings
from mailsync.webhooks import outbox
from mailsync.webhooks.delivery import AttemptResult
from tests.support.receiver import (
    finish_job,
    new_endpoint,
    new_workspace,
    running_job,
    webhook_settings,
)

HOOK = "https://hooks.example.com/in"


@pytest.fixture
def settings(unshared_database_url: str, tmp_path: Path) -> Settings:
    """Deliveries are run by hand here: no Prefect stack's delivery run shares the rows."""
    return webhook_settings(unshared_database_url, tmp_path)


def events_of(url: str, job_id: str) -> list[WebhookEvent]:
    with Session(get_engine(url)) as session:
        return list(session.exec(select(WebhookEvent).where(WebhookEvent.subject_id == job_id)))


def deliveries_of(url: str, event_id: str) -> list[WebhookDelivery]:
    with Session(get_engine(url)) as session:
        query = select(WebhookDelivery).where(WebhookDelivery.event_id == event_id)
        return list(session.exec(query))


def failed(at_offset: float = 0.0, status: int | None = 503) -> AttemptResult:
    return AttemptResult(utcnow() + timedelta(seconds=at_offset), status, 12, f"HTTP {status}")


def test_event_and_terminal_state_commit_or_roll_back_together(settings: Settings) -> None:
    """The event is written in the job's own transaction: rolled back, neither the terminal
    state nor the event exists; committed, both do, with a delivery due at once."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    new_endpoint(settings, workspace, HOOK)
    job_id = running_job(url, workspace)
    with Session(get_engine(url)) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        jobstore.mark_finished(session, job, counts={}, mailboxes=[])
        session.flush()
        session.rollback()  # the process dies before its commit
    with Session(get_engine(url)) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None and job.status == JobStatus.running
    assert events_of(url, job_id) == []

    finish_job(url, job_id)
    [event] = events_of(url, job_id)
    [delivery] = deliveries_of(url, event.id)
    assert event.type == "email.sync.completed" and event.id.startswith("msg_")
    assert delivery.status == "pending" and delivery.next_attempt_at is not None


def test_payload_is_the_public_job_view_with_duration_and_cursor_reset(settings: Settings) -> None:
    """data = the job's public view plus duration_seconds and cursor_reset (true when a mailbox
    ran full because its cursor was reset); no stored secret ever appears in it."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    job_id = running_job(url, workspace, started_at=utcnow() - timedelta(seconds=42))
    mailboxes = [
        {
            "mailbox_id": "mbx_hidden",
            "provider": "gmail",
            "address": "ada@example.com",
            "requested_mode": "incremental",
            "performed_mode": "full",
            "reason": "cursor_reset",
            "counts": {"messages_added": 5},
        }
    ]
    with session_scope(url) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        jobstore.mark_finished(session, job, counts={"messages_added": 5}, mailboxes=mailboxes)
    [event] = events_of(url, job_id)
    payload = event.payload
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["type"] == "email.sync.completed"
    data = payload["data"]
    assert data["job_id"] == job_id and data["status"] == "completed"
    assert data["counts"] == {"messages_added": 5} and data["error"] is None
    assert data["cursor_reset"] is True and 41 <= data["duration_seconds"] <= 60
    assert "mbx_hidden" not in str(payload) and "encrypted" not in str(payload)


def test_failed_job_event_carries_the_error(settings: Settings) -> None:
    """A failed job (however it failed, mark_failed included) yields email.sync.failed with its
    error code and message."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    job_id = running_job(url, workspace)
    with session_scope(url) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        jobstore.mark_failed(session, job, "job_crashed", "flow run crashed")
    [event] = events_of(url, job_id)
    assert event.type == "email.sync.failed"
    assert event.payload["data"]["error"] == {"code": "job_crashed", "message": "flow run crashed"}
    assert event.payload["data"]["cursor_reset"] is False


def test_an_ending_recorded_twice_is_announced_once(settings: Settings) -> None:
    """A retried close (or a crash noticed twice) records no second event."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    job_id = running_job(url, workspace)
    finish_job(url, job_id, error_code="job_crashed")
    finish_job(url, job_id, error_code="job_crashed")
    with session_scope(url) as session:  # forced through, even with the status reset
        job = session.get(SyncJob, job_id)
        assert job is not None
        job.status = JobStatus.running.value
        jobstore.mark_failed(session, job, "job_crashed", "again")
    assert len(events_of(url, job_id)) == 1


def test_only_active_endpoints_subscribed_to_the_type_get_a_delivery(settings: Settings) -> None:
    """One delivery per subscribed active endpoint of the job's workspace, nobody else's."""
    url = settings.resolved_database_url
    workspace, other = new_workspace(url), new_workspace(url)
    wanted, _ = new_endpoint(settings, workspace, HOOK)
    new_endpoint(settings, workspace, HOOK, ["email.sync.failed"])
    disabled, _ = new_endpoint(settings, workspace, HOOK)
    new_endpoint(settings, other, HOOK)
    with session_scope(url) as session:
        row = session.get(WebhookEndpoint, disabled.id)
        assert row is not None
        row.status = "disabled"
    job_id = running_job(url, workspace)
    finish_job(url, job_id)
    [event] = events_of(url, job_id)
    assert [d.endpoint_id for d in deliveries_of(url, event.id)] == [wanted.id]


def test_backoff_doubles_from_base_up_to_the_cap() -> None:
    """Attempt n waits base * 2**(n-1), capped at the maximum."""
    policy = outbox.RetryPolicy(base_seconds=5, max_seconds=3600)
    waits = [policy.delay(n).total_seconds() for n in range(1, 13)]
    assert waits == [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
    assert policy.delay(10_000).total_seconds() == 3600


def test_default_schedule_keeps_retrying_for_24_hours() -> None:
    """With the defaults a delivery is tried ~30 times across the 24 h horizon, not beyond."""
    policy, elapsed, attempts = outbox.RetryPolicy(), 0.0, 1
    while elapsed + policy.delay(attempts).total_seconds() <= policy.horizon_seconds:
        elapsed += policy.delay(attempts).total_seconds()
        attempts += 1
    assert 25 <= attempts <= 35 and elapsed > 20 * 3600


def test_failures_reschedule_until_the_horizon_then_fail(settings: Settings) -> None:
    """A failure sets next_attempt_at by the backoff; once the next retry would fall past the
    horizon the delivery is failed; every attempt is logged."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    new_endpoint(settings, workspace, HOOK)
    job_id = running_job(url, workspace)
    finish_job(url, job_id)
    [event] = events_of(url, job_id)
    [delivery] = deliveries_of(url, event.id)
    policy = outbox.RetryPolicy(base_seconds=60, max_seconds=600, horizon_seconds=150)
    with session_scope(url) as session:
        assert outbox.complete(session, delivery.id, failed(), policy) == "pending"
        row = session.get(WebhookDelivery, delivery.id)
        assert row is not None and row.next_attempt_at is not None
        wait = (as_utc(row.next_attempt_at) - utcnow()).total_seconds()  # type: ignore[operator]
        assert 55 <= wait <= 60
    with session_scope(url) as session:
        assert outbox.complete(session, delivery.id, failed(), policy) == "pending"  # +120 s
        assert outbox.complete(session, delivery.id, failed(), policy) == "failed"  # +240 s
    with Session(get_engine(url)) as session:
        row = session.get(WebhookDelivery, delivery.id)
        assert row is not None and row.attempts == 3 and row.next_attempt_at is None
        logged = session.exec(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery.id)
        ).all()
        assert [a.status_code for a in logged] == [503, 503, 503]


def test_a_claim_is_won_once_even_by_concurrent_runs(settings: Settings) -> None:
    """Of many runs claiming one due delivery at the same moment exactly one wins, and the
    delivery is not due again until the claim lapses (so a dead claimant's work is redone)."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    new_endpoint(settings, workspace, HOOK)
    job_id = running_job(url, workspace)
    finish_job(url, job_id)
    [event] = events_of(url, job_id)
    [delivery] = deliveries_of(url, event.id)
    now = utcnow()
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        with session_scope(url) as session:
            wins.append(outbox.claim(session, delivery.id, now, 60))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    with session_scope(url) as session:
        assert delivery.id not in outbox.due(session, now + timedelta(seconds=59))
        assert delivery.id in outbox.due(session, now + timedelta(seconds=61))


def test_an_endpoint_failing_for_three_days_is_disabled_with_a_notice(
    settings: Settings,
) -> None:
    """A failure 3 days after the first of an unbroken run of failures disables the endpoint,
    fails its pending deliveries and records a webhook.endpoint.disabled notice (delivered to
    nobody); a success in between resets the count."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    endpoint, _ = new_endpoint(settings, workspace, HOOK)
    first, second = running_job(url, workspace), running_job(url, workspace)
    finish_job(url, first)
    finish_job(url, second)
    [d1] = deliveries_of(url, events_of(url, first)[0].id)
    [d2] = deliveries_of(url, events_of(url, second)[0].id)
    policy = outbox.RetryPolicy(disable_after_seconds=3 * 24 * 3600)
    with session_scope(url) as session:
        outbox.complete(session, d1.id, failed(), policy)
        row = session.get(WebhookEndpoint, endpoint.id)
        assert row is not None and row.failing_since is not None and row.status == "active"
        row.failing_since = utcnow() - timedelta(days=3, seconds=1)
        session.add(row)
    with session_scope(url) as session:
        outbox.complete(session, d1.id, failed(), policy)
    with Session(get_engine(url)) as session:
        row = session.get(WebhookEndpoint, endpoint.id)
        assert row is not None and row.status == "disabled" and row.disabled_at is not None
        pending = session.get(WebhookDelivery, d2.id)
        assert pending is not None and pending.status == "failed"
        [notice] = session.exec(
            select(WebhookEvent).where(
                WebhookEvent.workspace_id == workspace,
                WebhookEvent.type == "webhook.endpoint.disabled",
            )
        ).all()
        assert notice.payload["data"]["endpoint_id"] == endpoint.id
        assert (
            session.exec(select(WebhookDelivery).where(WebhookDelivery.event_id == notice.id)).all()
            == []
        )


def test_a_success_clears_the_failing_streak(settings: Settings) -> None:
    """Delivered resets failing_since, so only an unbroken streak of failures disables."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    endpoint, _ = new_endpoint(settings, workspace, HOOK)
    job_id = running_job(url, workspace)
    finish_job(url, job_id)
    [delivery] = deliveries_of(url, events_of(url, job_id)[0].id)
    policy = outbox.RetryPolicy()
    with session_scope(url) as session:
        outbox.complete(session, delivery.id, failed(), policy)
    with session_scope(url) as session:
        ok = AttemptResult(utcnow(), 204, 5, None)
        assert outbox.complete(session, delivery.id, ok, policy) == "delivered"
    with Session(get_engine(url)) as session:
        row = session.get(WebhookEndpoint, endpoint.id)
        assert row is not None and row.failing_since is None and row.status == "active"
