"""Pruning the app database on a fixed clock, on SQLite and PostgreSQL (core/retention.py).

The clock is years before the rows other tests write to the shared database, so only this
test's rows (dated relative to it) are ever old enough to go.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from sqlmodel import Session, col, select, update

from mailsync.core import workspaces
from mailsync.core.retention import prune_records
from mailsync.core.rules import idempotency
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import (
    IdempotencyRecord,
    JobStatus,
    RunLease,
    SyncJob,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    new_id,
)

NOW = datetime(2020, 6, 1, 12, 0, tzinfo=UTC)
KEEP = timedelta(days=30)
OLD = NOW - KEEP - timedelta(minutes=1)
YOUNG = NOW - KEEP + timedelta(minutes=1)


def _workspace(url: str) -> str:
    with session_scope(url) as session:
        return workspaces.create_workspace(session, new_id("ws").lower().replace("_", "-")).id


def _job(url: str, ws: str, status: JobStatus, finished: datetime | None, **extra: Any) -> str:
    with session_scope(url) as session:
        job = SyncJob(
            workspace_id=ws,
            mode="incremental",
            providers=["gmail"],
            status=status.value,
            queued_at=(finished or OLD) - timedelta(minutes=5),
            finished_at=finished,
            **extra,
        )
        session.add(job)
        return job.id


def _event(url: str, ws: str, endpoint: str, subject: str, created: datetime, status: str) -> str:
    """An event about `subject` with one delivery in `status` and one attempt."""
    with session_scope(url) as session:
        event = WebhookEvent(
            workspace_id=ws, type="sync.completed", subject_id=subject, created_at=created
        )
        session.add(event)
        session.flush()
        delivery = WebhookDelivery(
            event_id=event.id, endpoint_id=endpoint, status=status, created_at=created
        )
        session.add(delivery)
        session.flush()
        session.add(WebhookAttempt(delivery_id=delivery.id, started_at=created, status_code=500))
        return event.id


def _endpoint(url: str, ws: str) -> str:
    with session_scope(url) as session:
        endpoint = WebhookEndpoint(
            workspace_id=ws, url="https://example.com/h", secret_encrypted="x"
        )
        session.add(endpoint)
        return endpoint.id


def _exists(url: str, table: Any, key: Any) -> bool:
    with Session(get_engine(url)) as session:
        return session.get(table, key) is not None


def _deliveries(url: str, event_id: str) -> list[str]:
    with Session(get_engine(url)) as session:
        return list(
            session.exec(select(WebhookDelivery.id).where(WebhookDelivery.event_id == event_id))
        )


def _attempts(url: str, event_id: str) -> int:
    with Session(get_engine(url)) as session:
        query = (
            select(WebhookAttempt.id)
            .join(WebhookDelivery, col(WebhookDelivery.id) == col(WebhookAttempt.delivery_id))
            .where(WebhookDelivery.event_id == event_id)
        )
        return len(list(session.exec(query)))


def test_old_finished_jobs_and_their_events_go_and_everything_still_needed_stays(
    database_url: str,
) -> None:
    """Past retention a finished job goes with its event, deliveries and attempts; a job
    finished within retention, a job still queued or running however old, a job whose
    webhook delivery is still pending, and a job whose on-demand quota window is still open
    all stay; an old event whose delivery is pending stays with that delivery. Once the
    delivery ends, the next prune takes the job and its event."""
    url = database_url
    ws = _workspace(url)
    endpoint = _endpoint(url, ws)
    old_done = _job(url, ws, JobStatus.completed, OLD)
    old_failed = _job(url, ws, JobStatus.failed, OLD)
    young_done = _job(url, ws, JobStatus.completed, YOUNG)
    old_running = _job(url, ws, JobStatus.running, None)
    old_queued = _job(url, ws, JobStatus.queued, None)
    waiting_delivery = _job(url, ws, JobStatus.completed, OLD)
    open_window = _job(
        url,
        ws,
        JobStatus.completed,
        OLD,
        quota_lease_id="l",
        quota_expires_at=NOW + timedelta(minutes=5),
    )
    delivered = _event(url, ws, endpoint, old_done, OLD, "delivered")
    given_up = _event(url, ws, endpoint, old_failed, OLD, "failed")
    young_event = _event(url, ws, endpoint, young_done, YOUNG, "delivered")
    pending = _event(url, ws, endpoint, waiting_delivery, OLD, "pending")

    counts = prune_records(url, NOW, KEEP)

    assert not _exists(url, SyncJob, old_done) and not _exists(url, SyncJob, old_failed)
    for kept in (young_done, old_running, old_queued, waiting_delivery, open_window):
        assert _exists(url, SyncJob, kept), kept
    for gone in (delivered, given_up):
        assert not _exists(url, WebhookEvent, gone)
        assert _deliveries(url, gone) == [] and _attempts(url, gone) == 0
    for kept in (young_event, pending):
        assert _exists(url, WebhookEvent, kept) and len(_deliveries(url, kept)) == 1
        assert _attempts(url, kept) == 1
    assert (counts.jobs, counts.events, counts.deliveries, counts.attempts) == (2, 2, 2, 2)
    assert prune_records(url, NOW, KEEP).jobs == 0  # nothing left to take: the same answer

    with session_scope(url) as session:
        session.exec(  # type: ignore[call-overload]
            update(WebhookDelivery)
            .where(col(WebhookDelivery.event_id) == pending)
            .values(status="delivered")
        )
    again = prune_records(url, NOW, KEEP)
    assert not _exists(url, SyncJob, waiting_delivery) and not _exists(url, WebhookEvent, pending)
    assert (again.jobs, again.events) == (1, 1)


def test_expired_idempotency_records_go_and_live_ones_stay(database_url: str) -> None:
    """Records past their expiry are deleted by the prune; one that has not expired is
    still replayed afterwards."""
    url = database_url
    ws = _workspace(url)
    idempotency.begin(
        url, ws, "live-key", "h", ttl_seconds=3600, now=lambda: NOW - timedelta(minutes=5)
    )
    # Begun later, on an earlier clock: its own opportunistic purge leaves live-key alone.
    idempotency.begin(
        url, ws, "expired-key", "h", ttl_seconds=60, now=lambda: NOW - timedelta(hours=2)
    )

    assert prune_records(url, NOW, KEEP).idempotency_records >= 1
    with Session(get_engine(url)) as session:
        keys = set(
            session.exec(select(IdempotencyRecord.key).where(IdempotencyRecord.workspace_id == ws))
        )
    assert keys == {"live-key"}


def test_forgotten_run_leases_go_and_recent_ones_stay(database_url: str) -> None:
    """A turn recorded by a run that died unhooked is deleted once past retention; one taken
    within it (a sync may still hold it) stays."""
    old, recent = f"lease-old-{uuid4()}", f"lease-recent-{uuid4()}"
    with session_scope(database_url) as session:
        session.add(
            RunLease(lease_id=old, flow_run_id="r", taken_at=NOW - KEEP - timedelta(hours=1))
        )
        session.add(RunLease(lease_id=recent, flow_run_id="r", taken_at=NOW - timedelta(hours=1)))
    assert prune_records(database_url, NOW, KEEP).run_leases >= 1
    with Session(get_engine(database_url)) as session:
        left = set(session.exec(select(RunLease.lease_id)))
    assert recent in left and old not in left
