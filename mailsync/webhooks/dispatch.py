"""What the deliver-webhooks flow and its callers run: one attempt end to end, and which
deliveries are due (the runs that make them are started by mailsync/orchestration/runs.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import WebhookDelivery, WebhookEndpoint, WebhookEvent, utcnow
from mailsync.settings import Settings, get_settings
from mailsync.webhooks import delivery, lanes, outbox, ssrf, store

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def due_deliveries(settings: Settings | None = None, limit: int = 100) -> list[str]:
    settings = settings or get_settings()
    with session_scope(settings.resolved_database_url) as session:
        return outbox.due(session, utcnow(), limit)


def next_due_at(settings: Settings | None = None) -> datetime | None:
    settings = settings or get_settings()
    with session_scope(settings.resolved_database_url) as session:
        return outbox.next_due_at(session)


def _prepare(settings: Settings, delivery_id: str) -> delivery.Outgoing | None:
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(WebhookDelivery, delivery_id)
        if row is None:
            return None
        endpoint = session.get(WebhookEndpoint, row.endpoint_id)
        event = session.get(WebhookEvent, row.event_id)
        if endpoint is None or event is None or endpoint.status != "active":
            row.status, row.next_attempt_at = "failed", None
            session.add(row)
            return None
        box = CredentialBox(settings.fernet_key())
        return delivery.Outgoing(
            delivery_id=row.id,
            event_id=event.id,
            url=endpoint.url,
            body=delivery.encode(event.payload),
            secrets=store.signing_secrets(box, endpoint),
        )


def deliver_one(
    delivery_id: str,
    settings: Settings | None = None,
    *,
    resolver: ssrf.Resolver = ssrf.system_resolver,
    clock: Clock = utcnow,
) -> dict[str, Any]:
    """Claim a due delivery, make one attempt and record it; a claimed-elsewhere or no longer
    deliverable one is skipped. Returns what happened (ids and figures, no secrets).
    `clock` is what the retry schedule and its horizon are reckoned by (tests move it)."""
    settings = settings or get_settings()
    policy = outbox.RetryPolicy.from_settings(settings)
    url = settings.resolved_database_url
    with session_scope(url) as session:
        if not outbox.claim(session, delivery_id, clock(), policy.claim_seconds):
            return {"delivery_id": delivery_id, "status": "skipped"}
    started, tick = clock(), time.monotonic()
    event_id: str | None = None
    try:
        outgoing = _prepare(settings, delivery_id)
        if outgoing is None:
            return {"delivery_id": delivery_id, "status": "skipped"}
        event_id = outgoing.event_id
        result = delivery.send(
            outgoing,
            timeout=settings.webhook_timeout_seconds,
            total_timeout=settings.webhook_attempt_seconds,
            allow_loopback=settings.webhook_allow_loopback,
            resolver=resolver,
            clock=clock,
        )
    except Exception as exc:
        # Unrecorded, the claim would lapse and the delivery be tried again every claim
        # period for ever, past its horizon: it is a failed attempt like a 500. Only the
        # type is kept: an exception's text may carry the URL or a secret.
        log.warning("webhook delivery %s got no response: %s", delivery_id, type(exc).__name__)
        result = delivery.broken(started, tick, exc)
    with session_scope(url) as session:
        status = outbox.complete(session, delivery_id, result, policy, clock())
    return {
        "delivery_id": delivery_id,
        "event_id": event_id,
        "status": status,
        "status_code": result.status_code,
        "latency_ms": result.latency_ms,
        "error": result.error,
    }


def deliver_due(settings: Settings | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Every delivery due now, and any falling due meanwhile, in parallel lanes on this
    process's threads (no Prefect); returns once none is due or in flight."""
    settings = settings or get_settings()
    outcomes: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=settings.webhook_concurrency) as pool:

        def start(delivery_id: str, done: Callable[[], None]) -> None:
            def attempt() -> None:
                try:
                    outcomes.append(deliver_one(delivery_id, settings, **kwargs))
                finally:
                    done()

            pool.submit(attempt)

        lanes.pump(settings, start)
    return outcomes


def _job_deliveries(job_id: str, settings: Settings, limit: int) -> list[str]:
    """The pending deliveries of the job's event, soonest due first."""
    with session_scope(settings.resolved_database_url) as session:
        query = (
            select(WebhookDelivery.id)
            .join(WebhookEvent, col(WebhookEvent.id) == col(WebhookDelivery.event_id))
            .where(WebhookEvent.subject_id == job_id, WebhookDelivery.status == "pending")
            .order_by(col(WebhookDelivery.next_attempt_at))
            .limit(limit)
        )
        return list(session.exec(query))


def job_has_deliveries(job_id: str, settings: Settings | None = None) -> bool:
    return bool(_job_deliveries(job_id, settings or get_settings(), 1))


# A job's own run attempts at most this many endpoints itself; a workspace with more leaves
# the rest to a delivery run rather than keep its sync run (and its worker slot) busy.
DELIVER_IN_RUN = 4


def deliver_after_job(
    job_id: str,
    settings: Settings | None = None,
    *,
    resolver: ssrf.Resolver = ssrf.system_resolver,
) -> list[dict[str, Any]]:
    """The first attempt at the job's event, from the run that ended the job: a delivery run
    would be a second flow run (~1.5 s on the warm worker) before the first attempt. What is
    left (a failed attempt's retry, endpoints beyond DELIVER_IN_RUN) is for a delivery run
    the caller starts (tasks/deliver_webhook.py), which schedules the retries. Never raises:
    failing everything, the delivery deployment's schedule finds the pending deliveries."""
    settings = settings or get_settings()
    outcomes: list[dict[str, Any]] = []
    try:
        ids = _job_deliveries(job_id, settings, DELIVER_IN_RUN)
        # Side by side: the run holds a worker slot, for one attempt bound, not one per endpoint.
        with ThreadPoolExecutor(max_workers=max(len(ids), 1)) as pool:
            futures = [pool.submit(deliver_one, i, settings, resolver=resolver) for i in ids]
        for future in futures:
            try:
                outcomes.append(future.result())
            except Exception:
                log.warning("could not deliver the job's event from its run", exc_info=True)
    except Exception:
        log.warning("could not deliver the job's event from its run", exc_info=True)
    return outcomes
