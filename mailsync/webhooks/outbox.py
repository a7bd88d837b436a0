"""The outbox: events written in the transaction that causes them, and their deliveries.

A job's terminal state and its event commit together (jobstore.mark_finished calls
`record_job_event`), so no crash can keep one without the other. Each event gets one
delivery row per subscribed active endpoint (unique per event and endpoint); the row carries
the retry schedule (next_attempt_at), so it survives restarts for as long as the horizon.
Sending is elsewhere (delivery.py); the flow that drives it is flows/deliver_webhooks.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlmodel import Session, col, select, update

from mailsync.db.tables import (
    SyncJob,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    as_utc,
    iso,
    utcnow,
)
from mailsync.settings import Settings
from mailsync.webhooks.store import ENDPOINT_DISABLED, JOB_COMPLETED, JOB_FAILED


class Outcome(Protocol):
    """What one attempt left behind (delivery.AttemptResult)."""

    @property
    def started_at(self) -> datetime: ...
    @property
    def status_code(self) -> int | None: ...
    @property
    def latency_ms(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def ok(self) -> bool: ...


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 5.0
    max_seconds: float = 3600.0
    horizon_seconds: int = 24 * 3600
    disable_after_seconds: int = 3 * 24 * 3600
    claim_seconds: int = 60

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.webhook_retry_base_seconds,
            settings.webhook_retry_max_seconds,
            settings.webhook_retry_horizon_seconds,
            settings.webhook_disable_after_seconds,
            settings.webhook_claim_seconds,
        )

    def delay(self, attempts: int) -> timedelta:
        """Wait after the attempts-th failure: base, 2*base, 4*base ... capped at max."""
        exponent = min(max(attempts - 1, 0), 40)  # 2**40 * base is past any sane cap
        return timedelta(seconds=min(self.base_seconds * 2**exponent, self.max_seconds))


def record_event(
    session: Session,
    workspace_id: str,
    event_type: str,
    subject_id: str | None,
    data: dict[str, Any],
    *,
    deliver: bool = True,
) -> WebhookEvent | None:
    """Add the event (and its deliveries) to the session; the caller's commit makes it real.

    One event per subject and type: a second outcome of the same kind (a retried close, a
    crash noticed twice) records nothing, so receivers never get it doubled.
    """
    if subject_id is not None:
        seen = session.exec(
            select(WebhookEvent.id).where(
                WebhookEvent.subject_id == subject_id, WebhookEvent.type == event_type
            )
        ).first()
        if seen is not None:
            return None
    now = utcnow()
    event = WebhookEvent(
        workspace_id=workspace_id,
        type=event_type,
        subject_id=subject_id,
        payload={"type": event_type, "timestamp": iso(now), "data": data},
        created_at=now,
    )
    session.add(event)
    if deliver:
        endpoints = session.exec(
            select(WebhookEndpoint).where(
                WebhookEndpoint.workspace_id == workspace_id, WebhookEndpoint.status == "active"
            )
        )
        for endpoint in endpoints:
            if event_type in endpoint.events:
                session.add(
                    WebhookDelivery(
                        event_id=event.id,
                        endpoint_id=endpoint.id,
                        next_attempt_at=now,
                        created_at=now,
                    )
                )
    session.flush()
    return event


def job_event_data(job: SyncJob, view: dict[str, Any]) -> dict[str, Any]:
    """The job's public view plus duration and whether a cursor reset forced a full sync."""
    started, finished = as_utc(job.started_at), as_utc(job.finished_at)
    duration = (finished - started).total_seconds() if started and finished else None
    cursor_reset = any(
        m.get("reason") == "cursor_reset" and m.get("performed_mode") != m.get("requested_mode")
        for m in job.mailboxes or []
    )
    return {
        **view,
        "duration_seconds": round(duration, 3) if duration is not None else None,
        "cursor_reset": cursor_reset,
    }


def record_job_event(session: Session, job: SyncJob, view: dict[str, Any]) -> WebhookEvent | None:
    event_type = JOB_FAILED if job.error_code else JOB_COMPLETED
    return record_event(session, job.workspace_id, event_type, job.id, job_event_data(job, view))


def due(session: Session, now: datetime, limit: int = 100) -> list[str]:
    query = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == "pending",
            col(WebhookDelivery.next_attempt_at) <= now,
        )
        .order_by(col(WebhookDelivery.next_attempt_at))
        .limit(limit)
    )
    return list(session.exec(query))


def next_due_at(session: Session) -> datetime | None:
    query = (
        select(WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.status == "pending")
        .order_by(col(WebhookDelivery.next_attempt_at))
        .limit(1)
    )
    return as_utc(session.exec(query).first())


def claim(session: Session, delivery_id: str, now: datetime, hold_seconds: int) -> bool:
    """Take a due delivery for one attempt; False when another run took it first.

    One conditional UPDATE, so two runs cannot both win; the hold (pushing next_attempt_at
    forward) also makes the delivery due again if the claimant dies mid-attempt.
    """
    result = session.exec(  # type: ignore[call-overload]
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == delivery_id,
            col(WebhookDelivery.status) == "pending",
            col(WebhookDelivery.next_attempt_at) <= now,
        )
        .values(next_attempt_at=now + timedelta(seconds=hold_seconds))
    )
    return bool(result.rowcount == 1)


def complete(
    session: Session,
    delivery_id: str,
    outcome: Outcome,
    policy: RetryPolicy,
    now: datetime | None = None,
) -> str | None:
    """Log the attempt and set what happens next; returns the delivery's new status.

    `now` (default: the wall clock) decides the retry time and whether the horizon has passed.
    """
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:  # its endpoint was deleted meanwhile
        return None
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    now = now or utcnow()
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            started_at=outcome.started_at,
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            error=outcome.error,
        )
    )
    delivery.attempts += 1
    delivery.last_status_code = outcome.status_code
    if outcome.ok:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = "delivered", now, None
        if endpoint is not None:
            endpoint.failing_since = None
            session.add(endpoint)
    else:
        created = as_utc(delivery.created_at) or now
        until = as_utc(delivery.retry_until) or created + timedelta(seconds=policy.horizon_seconds)
        delivery.retry_until = until
        retry_at = now + policy.delay(delivery.attempts)
        if retry_at > until:
            delivery.status, delivery.next_attempt_at = "failed", None
        else:
            delivery.next_attempt_at = retry_at
        if endpoint is not None:
            _note_failure(session, endpoint, outcome.started_at, now, policy)
    session.add(delivery)
    return delivery.status


def _note_failure(
    session: Session,
    endpoint: WebhookEndpoint,
    failed_at: datetime,
    now: datetime,
    policy: RetryPolicy,
) -> None:
    since = as_utc(endpoint.failing_since) or failed_at
    endpoint.failing_since = since
    session.add(endpoint)
    if endpoint.status == "active" and now - since >= timedelta(
        seconds=policy.disable_after_seconds
    ):
        disable(session, endpoint, now)


def disable(session: Session, endpoint: WebhookEndpoint, now: datetime) -> None:
    """Stop calling an endpoint that keeps failing, and leave a notice for the workspace."""
    endpoint.status, endpoint.disabled_at = "disabled", now
    session.add(endpoint)
    session.exec(  # type: ignore[call-overload]
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.endpoint_id) == endpoint.id,
            col(WebhookDelivery.status) == "pending",
        )
        .values(status="failed", next_attempt_at=None)
    )
    record_event(
        session,
        endpoint.workspace_id,
        ENDPOINT_DISABLED,
        None,  # an endpoint can be disabled again after being re-enabled
        {
            "endpoint_id": endpoint.id,
            "url": endpoint.url,
            "failing_since": iso(endpoint.failing_since),
            "disabled_at": iso(now),
        },
        deliver=False,
    )


def replay(session: Session, delivery: WebhookDelivery, horizon_seconds: int) -> None:
    """Send the delivery again, with the same event id, and a fresh retry horizon."""
    now = utcnow()
    delivery.status, delivery.next_attempt_at = "pending", now
    delivery.retry_until = now + timedelta(seconds=horizon_seconds)
    session.add(delivery)
