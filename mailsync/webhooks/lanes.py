"""Delivery attempts in parallel lanes, per endpoint and per workspace, so that one slow or
blackholed receiver holds only its own lanes and never another tenant's deliveries.

A delivery run "pumps": it starts every due delivery whose lanes have room, keeps looking for
newly due ones while attempts are in flight (a sync job's event is picked up within a poll,
not after the slowest attempt of a round), and returns when nothing is in flight and nothing
is due soon. How an attempt runs (a Prefect task, a thread) is the caller's `start`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlmodel import Session, col, select

from mailsync.db import session_scope
from mailsync.db.tables import WebhookDelivery, WebhookEndpoint, utcnow
from mailsync.settings import Settings
from mailsync.webhooks import outbox

# start(delivery_id, done): begin one attempt elsewhere; call done() once it has ended, however.
Start = Callable[[str, Callable[[], None]], None]


@dataclass(frozen=True)
class Limits:
    total: int
    per_endpoint: int
    per_workspace: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            settings.webhook_concurrency,
            settings.webhook_endpoint_concurrency,
            settings.webhook_workspace_concurrency,
        )


@dataclass(frozen=True)
class Due:
    delivery_id: str
    endpoint_id: str
    workspace_id: str


class Lanes:
    """The attempts in flight, counted per endpoint and workspace. Thread-safe: attempts end
    on other threads."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._changed = threading.Condition()
        self._endpoints: Counter[str] = Counter()
        self._workspaces: Counter[str] = Counter()
        self._total = 0
        self._deliveries: set[str] = set()

    @property
    def in_flight(self) -> int:
        with self._changed:
            return self._total

    def room(self) -> int:
        with self._changed:
            return max(self.limits.total - self._total, 0)

    def delivery_ids(self) -> set[str]:
        with self._changed:
            return set(self._deliveries)

    def full(self) -> tuple[set[str], set[str]]:
        """The endpoints and the workspaces that may start no more attempts now."""
        with self._changed:
            endpoints = {e for e, n in self._endpoints.items() if n >= self.limits.per_endpoint}
            workspaces = {w for w, n in self._workspaces.items() if n >= self.limits.per_workspace}
            return endpoints, workspaces

    def take(self, due: Due) -> bool:
        with self._changed:
            if (
                self._total >= self.limits.total
                or self._endpoints[due.endpoint_id] >= self.limits.per_endpoint
                or self._workspaces[due.workspace_id] >= self.limits.per_workspace
            ):
                return False
            self._total += 1
            self._deliveries.add(due.delivery_id)
            self._endpoints[due.endpoint_id] += 1
            self._workspaces[due.workspace_id] += 1
            return True

    def release(self, due: Due) -> None:
        with self._changed:
            self._total -= 1
            self._deliveries.discard(due.delivery_id)
            self._endpoints[due.endpoint_id] -= 1
            self._workspaces[due.workspace_id] -= 1
            self._changed.notify_all()

    def wait(self, seconds: float) -> None:
        """Until an attempt ends or `seconds` have passed."""
        with self._changed:
            self._changed.wait(seconds)


def due_now(
    session: Session,
    now: datetime,
    limit: int,
    skip_endpoints: set[str],
    skip_workspaces: set[str],
    skip_deliveries: set[str],
) -> list[Due]:
    """Due deliveries, soonest first, leaving out full lanes: a backlog of one endpoint must not
    fill the batch and hide everybody else's."""
    query = (
        select(WebhookDelivery.id, WebhookDelivery.endpoint_id, WebhookEndpoint.workspace_id)
        .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
        .where(WebhookDelivery.status == "pending", col(WebhookDelivery.next_attempt_at) <= now)
    )
    if skip_endpoints:
        query = query.where(col(WebhookDelivery.endpoint_id).not_in(skip_endpoints))
    if skip_deliveries:
        query = query.where(col(WebhookDelivery.id).not_in(skip_deliveries))
    if skip_workspaces:
        query = query.where(col(WebhookEndpoint.workspace_id).not_in(skip_workspaces))
    query = query.order_by(col(WebhookDelivery.next_attempt_at)).limit(limit)
    return [Due(*row) for row in session.exec(query)]


def start_due(settings: Settings, lanes: Lanes, start: Start) -> int:
    """Start every due delivery its lanes have room for; returns how many were started."""
    started = 0
    while (room := lanes.room()) > 0:
        endpoints, workspaces = lanes.full()
        with session_scope(settings.resolved_database_url) as session:
            # In flight is not yet claimed, maybe: its attempt claims it on its own thread.
            batch = due_now(session, utcnow(), room, endpoints, workspaces, lanes.delivery_ids())
        taken = [due for due in batch if lanes.take(due)]
        for due in taken:
            try:
                start(due.delivery_id, partial(lanes.release, due))
            except BaseException:
                lanes.release(due)
                raise
        started += len(taken)
        if not taken:  # nothing due, or lanes filled within the batch: the next look skips them
            break
    return started


def pump(
    settings: Settings,
    start: Start,
    *,
    linger_seconds: float = 0.0,
    max_run_seconds: float = 300.0,
    poll_seconds: float = 0.25,
) -> datetime | None:
    """Deliver until nothing is in flight and nothing falls due within `linger_seconds` (or
    the run is `max_run_seconds` old: then the attempts in flight are only waited for).
    Returns when the next pending delivery is due, None when there is none."""
    began = time.monotonic()
    lanes = Lanes(Limits.from_settings(settings))
    while True:
        fresh = time.monotonic() - began <= max_run_seconds
        if fresh:
            start_due(settings, lanes, start)
        if lanes.in_flight:
            lanes.wait(poll_seconds)  # new events are looked for while attempts run
            continue
        with session_scope(settings.resolved_database_url) as session:
            next_at = outbox.next_due_at(session)
        if next_at is None:
            return None
        wait = (next_at - utcnow()).total_seconds()
        if wait > linger_seconds or not fresh:
            return next_at
        time.sleep(min(max(wait, 0.05), 2.0))
