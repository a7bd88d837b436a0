"""Graph change notifications: subscriptions, their validation handshake, and their deliveries.

A subscription on a mailbox's messages (`users/{upn}/messages`, or one folder's) is created
only once its notificationUrl (and lifecycleNotificationUrl, if given) echoed a
`validationToken` as text/plain within 10 s, lives at most 4,230 minutes, and gets a POST of
Graph's `{"value": [...]}` for every created, updated and deleted message while it lives. The
deliveries run on a small pool of threads, never under the fake's lock; a failed one is tried
again a few times, as Graph does. The admin surface drops or duplicates the next notifications,
sends lifecycle events, and expires subscriptions.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from mailsync.fakes.microsoft.content import b64url
from mailsync.fakes.microsoft.errors import GraphFault

log = logging.getLogger(__name__)

MAX_MINUTES = 4230  # Graph's longest lifetime of a subscription on Outlook messages
VALIDATION_TIMEOUT = 10.0
_CHANGE_TYPES = {"create": "created", "update": "updated", "remove": "deleted"}
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
_RETRY_DELAYS = (0.2, 1.0, 3.0)


@dataclass
class FakeSubscription:
    id: str
    address: str
    object_id: str
    tenant_id: str
    client_id: str
    resource: str
    folder_key: str | None  # None: every folder
    change_types: frozenset[str]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires_at: float  # epoch seconds

    def view(self) -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.client_id,
            "changeType": ",".join(sorted(self.change_types)),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": _iso(self.expires_at),
            "creatorId": self.object_id,
            "latestSupportedTlsVersion": "v1_2",
            "notificationContentType": None,
            "includeResourceData": False,
        }


@dataclass
class DeliveryStats:
    """What the fake sent: every POST attempt's outcome, and what the admin controls did."""

    notifications: int = 0  # change notifications meant for a subscription
    delivered: int = 0  # POSTs answered 2xx
    failed: int = 0  # notifications given up on after their retries
    dropped: int = 0
    duplicated: int = 0
    lifecycle: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # answer status -> POSTs

    def view(self) -> dict[str, Any]:
        return {
            "notifications": self.notifications,
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": self.dropped,
            "duplicated": self.duplicated,
            "lifecycle": self.lifecycle,
            "statuses": dict(self.statuses),
        }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


class Subscriptions:
    """Every subscription of one fake, and the threads that deliver their notifications."""

    def __init__(self, ca_bundle: str | None = None) -> None:
        self._lock = threading.Lock()
        self.by_id: dict[str, FakeSubscription] = {}
        self.stats = DeliveryStats()
        self._drop = 0
        self._duplicate = 0
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="graph-notify")
        self._http = httpx.Client(timeout=VALIDATION_TIMEOUT, verify=ca_bundle or True)

    # --- lifecycle of a subscription ----------------------------------------------------

    def validate(self, url: str) -> None:
        """Graph's handshake: the URL must echo a validationToken as text/plain, 200, in 10 s."""
        token = (
            "Validation: Testing client application reachability for subscription Request-Id: "
            f"{uuid.uuid4()}"
        )
        failure = GraphFault(
            400,
            "ValidationError",
            "Subscription validation request failed. Notification endpoint must respond with "
            "200 OK to validation request.",
        )
        try:
            response = self._http.post(
                url,
                params={"validationToken": token},
                headers={"Content-Type": "text/plain; charset=utf-8"},
                content=b"",
            )
        except httpx.HTTPError as exc:
            raise failure from exc
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code != 200 or media != "text/plain" or response.text != token:
            raise failure

    def add(self, subscription: FakeSubscription) -> None:
        with self._lock:
            self.by_id[subscription.id] = subscription

    def get(self, subscription_id: str, now: float) -> FakeSubscription:
        with self._lock:
            subscription = self.by_id.get(subscription_id)
        # Graph forgets a subscription once it expired: renewing it then is a 404.
        if subscription is None or subscription.expires_at <= now:
            raise GraphFault(404, "ResourceNotFound", "The object was not found.")
        return subscription

    def remove(self, subscription_id: str) -> FakeSubscription | None:
        with self._lock:
            return self.by_id.pop(subscription_id, None)

    def listing(self) -> list[FakeSubscription]:
        """The live subscriptions; Graph forgets expired ones."""
        now = time.time()
        with self._lock:
            return [s for s in self.by_id.values() if s.expires_at > now]

    def expire(self, subscription_id: str) -> bool:
        with self._lock:
            subscription = self.by_id.get(subscription_id)
            if subscription is None:
                return False
            subscription.expires_at = min(subscription.expires_at, time.time())
            return True

    # --- admin controls -----------------------------------------------------------------

    def control(self, drop: int | None, duplicate: int | None) -> dict[str, int]:
        """Drop (never send) or duplicate (send twice) the next N change notifications."""
        with self._lock:
            if drop is not None:
                self._drop = drop
            if duplicate is not None:
                self._duplicate = duplicate
            return {"drop": self._drop, "duplicate": self._duplicate}

    def stats_view(self) -> dict[str, Any]:
        with self._lock:
            return self.stats.view()

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = DeliveryStats()

    # --- notifications ------------------------------------------------------------------

    def changed(self, address: str, message_id: str, folder_key: str, kind: str) -> None:
        """A mailbox's change log grew (called under the fake's lock: queue, never send)."""
        change_type = _CHANGE_TYPES[kind]
        now = time.time()
        with self._lock:
            targets = [
                s
                for s in self.by_id.values()
                if s.address == address
                and s.expires_at > now
                and change_type in s.change_types
                and (s.folder_key is None or s.folder_key == folder_key)
            ]
            batches: list[tuple[FakeSubscription, dict[str, Any]]] = []
            for subscription in targets:
                self.stats.notifications += 1
                if self._drop > 0:
                    self._drop -= 1
                    self.stats.dropped += 1
                    continue
                body = _change(subscription, change_type, message_id)
                batches.append((subscription, body))
                if self._duplicate > 0:
                    self._duplicate -= 1
                    self.stats.duplicated += 1
                    batches.append((subscription, body))
        for subscription, body in batches:
            self._pool.submit(self._deliver, subscription.notification_url, body)

    def lifecycle(self, subscription_id: str, event: str) -> FakeSubscription:
        """Send a lifecycle event; subscriptionRemoved also deletes the subscription."""
        with self._lock:
            subscription = self.by_id.get(subscription_id)
            if subscription is None:
                raise GraphFault(404, "ResourceNotFound", "The object was not found.")
            if event == "subscriptionRemoved":
                del self.by_id[subscription_id]
            self.stats.lifecycle += 1
        if subscription.lifecycle_url:
            body = {
                "value": [
                    {
                        "subscriptionId": subscription.id,
                        "subscriptionExpirationDateTime": _iso(subscription.expires_at),
                        "tenantId": subscription.tenant_id,
                        "clientState": subscription.client_state,
                        "lifecycleEvent": event,
                    }
                ]
            }
            self._pool.submit(self._deliver, subscription.lifecycle_url, body)
        return subscription

    def _deliver(self, url: str, body: dict[str, Any]) -> None:
        for delay in (*_RETRY_DELAYS, None):
            try:
                response = self._http.post(url, json=body)
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with self._lock:
                self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
                if status.startswith("2"):
                    self.stats.delivered += 1
                    return
                if delay is None:
                    self.stats.failed += 1
                    return
            time.sleep(delay)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()


def _change(subscription: FakeSubscription, change_type: str, message_id: str) -> dict[str, Any]:
    resource = f"Users/{subscription.object_id}/Messages/{message_id}"
    return {
        "value": [
            {
                "subscriptionId": subscription.id,
                "subscriptionExpirationDateTime": _iso(subscription.expires_at),
                "changeType": change_type,
                "resource": resource,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.Message",
                    "@odata.id": resource,
                    "@odata.etag": f'W/"{b64url(secrets.token_bytes(12))}"',
                    "id": message_id,
                },
                "clientState": subscription.client_state,
                "tenantId": subscription.tenant_id,
            }
        ]
    }
