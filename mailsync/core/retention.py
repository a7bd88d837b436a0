"""What is past retention, and the deletes of mailsync's own records past it (the `prune` flow).

Every decision takes `now` from its caller, so the age rules are tested on a fixed clock. The
rules:

- a job goes once it is terminal, finished more than `records` ago, its on-demand quota
  window is over (quota_state counts the jobs of an open window) and none of its webhook
  deliveries is still pending;
- a webhook event goes once created more than `records` ago, with its deliveries and their
  attempts, unless one of its deliveries is still pending (that delivery and its event stay);
- an Idempotency-Key record goes once expired (core/rules/idempotency.purge_expired);
- a Prefect flow run of mailsync's deployments goes once terminal and ended more than
  `records` ago;
- a per-workspace, per-mailbox or legacy per-key/per-address Prefect limit goes once no slot
  of it is taken and none was taken or given back for `limit_idle` (the Prefect side,
  orchestration/pruning.py, also holds every slot of it while deleting it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, func

from mailsync.core.rules import idempotency
from mailsync.core.rules.admission import (
    FULL_SYNC_LIMIT_PREFIX,
    MAILBOX_LIMIT_PREFIX,
    QUOTA_LIMIT_PREFIX,
)
from mailsync.db import session_scope
from mailsync.db.tables import (
    JobStatus,
    RunLease,
    SyncJob,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    as_utc,
)
from mailsync.settings import Settings

# Per API key and per client address rate limits of versions before the in-process token
# buckets (core/rules/token_buckets.py): nothing takes them any more, so they only pile up.
LEGACY_LIMIT_PREFIXES = ("mailsync-requests:key:", "mailsync-requests:address:")
PRUNABLE_LIMIT_PREFIXES = (
    FULL_SYNC_LIMIT_PREFIX,
    MAILBOX_LIMIT_PREFIX,
    QUOTA_LIMIT_PREFIX,
    *LEGACY_LIMIT_PREFIXES,
)
# Prefect's terminal state types (StateType values), spelled here so core needs no Prefect.
TERMINAL_RUN_STATES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
_TERMINAL_JOBS = [s.value for s in JobStatus if s.terminal]
# Rows per delete statement: well under SQLite's bound-parameter limit.
BATCH = 500


@dataclass(frozen=True)
class Retention:
    records: timedelta  # jobs, webhook events, flow runs
    limit_idle: timedelta  # Prefect limits nobody used

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(
            records=timedelta(days=settings.retention_days),
            limit_idle=timedelta(hours=settings.limit_idle_hours),
        )


@dataclass(frozen=True)
class LimitView:
    """What Prefect says of one global concurrency limit; `updated` moves with every take
    and release (Prefect's ORM stamps each update of the row)."""

    id: str
    name: str
    limit: int
    active_slots: int
    active: bool
    updated: datetime


def limit_is_prunable(limit: LimitView, now: datetime, idle: timedelta) -> bool:
    """One of the limits mailsync creates per workspace, mailbox, key or address, enforced,
    with no slot taken, and untouched for `idle`. A limit turned off by hand is left alone."""
    updated = as_utc(limit.updated)
    assert updated is not None
    return (
        limit.name.startswith(PRUNABLE_LIMIT_PREFIXES)
        and limit.active
        and limit.active_slots == 0
        and updated <= now - idle
    )


def flow_run_is_prunable(
    state_type: str | None, end_time: datetime | None, now: datetime, retention: timedelta
) -> bool:
    """Terminal and ended more than `retention` ago; a run without an end is never old."""
    end = as_utc(end_time)
    return state_type in TERMINAL_RUN_STATES and end is not None and end <= now - retention


@dataclass
class RecordCounts:
    jobs: int = 0
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    idempotency_records: int = 0
    run_leases: int = 0


def _pending_job_ids() -> sa.Select[Any]:
    """Ids of the jobs one of whose events still has a delivery pending."""
    return (
        sa.select(col(WebhookEvent.subject_id))
        .join(WebhookDelivery, col(WebhookDelivery.event_id) == col(WebhookEvent.id))
        .where(col(WebhookDelivery.status) == "pending")
        .where(col(WebhookEvent.subject_id).is_not(None))
    )


def _old_job(now: datetime, cutoff: datetime) -> sa.ColumnElement[bool]:
    ended = func.coalesce(col(SyncJob.finished_at), col(SyncJob.queued_at))
    return sa.and_(
        col(SyncJob.status).in_(_TERMINAL_JOBS),
        ended <= cutoff,
        sa.or_(col(SyncJob.quota_expires_at).is_(None), col(SyncJob.quota_expires_at) <= now),
        col(SyncJob.id).not_in(_pending_job_ids()),
    )


def _old_event(cutoff: datetime) -> sa.ColumnElement[bool]:
    pending = (
        sa.select(col(WebhookDelivery.id))
        .where(col(WebhookDelivery.event_id) == col(WebhookEvent.id))
        .where(col(WebhookDelivery.status) == "pending")
    )
    return sa.and_(col(WebhookEvent.created_at) <= cutoff, ~pending.exists())


def _ids(database_url: str, query: sa.Select[Any]) -> list[str]:
    with session_scope(database_url) as session:
        return [str(i) for i in session.connection().execute(query.limit(BATCH)).scalars()]


def _prune_jobs(database_url: str, now: datetime, cutoff: datetime) -> int:
    deleted = 0
    while ids := _ids(database_url, sa.select(col(SyncJob.id)).where(_old_job(now, cutoff))):
        with session_scope(database_url) as session:
            # The rule again in the delete: a job that changed since the read stays.
            statement = sa.delete(SyncJob).where(col(SyncJob.id).in_(ids), _old_job(now, cutoff))
            deleted += session.connection().execute(statement).rowcount or 0
        if len(ids) < BATCH:
            break
    return deleted


def _prune_events(database_url: str, cutoff: datetime, counts: RecordCounts) -> None:
    while ids := _ids(database_url, sa.select(col(WebhookEvent.id)).where(_old_event(cutoff))):
        with session_scope(database_url) as session:
            connection = session.connection()
            # Only deliveries that ended: one made pending again since the read (a replay)
            # keeps itself, its attempts and its event.
            ended = sa.select(col(WebhookDelivery.id)).where(
                col(WebhookDelivery.event_id).in_(ids), col(WebhookDelivery.status) != "pending"
            )
            counts.attempts += (
                connection.execute(
                    sa.delete(WebhookAttempt).where(col(WebhookAttempt.delivery_id).in_(ended))
                ).rowcount
                or 0
            )
            counts.deliveries += (
                connection.execute(
                    sa.delete(WebhookDelivery).where(
                        col(WebhookDelivery.event_id).in_(ids),
                        col(WebhookDelivery.status) != "pending",
                    )
                ).rowcount
                or 0
            )
            left = sa.select(col(WebhookDelivery.event_id)).where(
                col(WebhookDelivery.event_id).in_(ids)
            )
            counts.events += (
                connection.execute(
                    sa.delete(WebhookEvent).where(
                        col(WebhookEvent.id).in_(ids), col(WebhookEvent.id).not_in(left)
                    )
                ).rowcount
                or 0
            )
        if len(ids) < BATCH:
            break


def prune_records(database_url: str, now: datetime, retention: timedelta) -> RecordCounts:
    """Delete the jobs, webhook events (deliveries, attempts), Idempotency-Key records and
    forgotten run leases past retention, in batches of their own transactions; returns what
    went."""
    cutoff = now - retention
    counts = RecordCounts()
    counts.jobs = _prune_jobs(database_url, now, cutoff)
    _prune_events(database_url, cutoff, counts)
    counts.idempotency_records = idempotency.purge_expired(database_url, now=lambda: now)
    counts.run_leases = _prune_run_leases(database_url, cutoff)
    return counts


def _prune_run_leases(database_url: str, cutoff: datetime) -> int:
    """Turn records of runs that died where no hook ran for them (a lost machine): their
    leases expired long ago, and no sync holds a turn for a whole retention period."""
    with session_scope(database_url) as session:
        gone = sa.delete(RunLease).where(col(RunLease.taken_at) < cutoff)
        return int(session.connection().execute(gone).rowcount or 0)


def prunable_limits(limits: Sequence[LimitView], now: datetime, idle: timedelta) -> list[LimitView]:
    return [limit for limit in limits if limit_is_prunable(limit, now, idle)]
