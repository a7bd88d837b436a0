"""The fakes' push admin surfaces, mixed into GmailAdmin and MicrosoftAdmin (client.py): the
fake Pub/Sub behind Gmail watches, and the fake Graph's subscriptions and notifications."""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

import httpx

from mailsync.fakes.admin_types import (
    GraphSubscription,
    NotificationStats,
    PubSubView,
    PushSubscriptionSpec,
)


class _Admin(Protocol):
    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...

    def _json(self, method: str, path: str, **kwargs: Any) -> Any: ...


class GmailPushAdmin:
    def put_push_subscription(self: _Admin, spec: PushSubscriptionSpec) -> None:
        """Create or replace a Pub/Sub push subscription (its topic exists from then on)."""
        self._call("PUT", "/_admin/pubsub/subscriptions", json=spec.model_dump())

    def delete_push_subscription(self: _Admin, name: str) -> None:
        self._call("DELETE", f"/_admin/pubsub/subscriptions/{name}")

    def control_pushes(
        self: _Admin, *, drop: int | None = None, duplicate: int | None = None
    ) -> None:
        """Drop (never push) or push twice the next `drop` / `duplicate` messages."""
        self._call("PUT", "/_admin/pubsub/control", json={"drop": drop, "duplicate": duplicate})

    def pubsub(self: _Admin) -> PubSubView:
        """The watches, push subscriptions and push statistics."""
        return PubSubView.model_validate(self._json("GET", "/_admin/pubsub"))


class GraphPushAdmin:
    def subscriptions(self: _Admin, address: str | None = None) -> list[GraphSubscription]:
        """The live Graph subscriptions (of `address` only, if given)."""
        params = {"address": address} if address else None
        body = self._json("GET", "/_admin/subscriptions", params=params)["subscriptions"]
        return [GraphSubscription.model_validate(s) for s in body]

    def lifecycle(self: _Admin, subscription_id: str, event: str) -> None:
        """Send a lifecycle event (reauthorizationRequired, subscriptionRemoved: the
        subscription is deleted too, or missed) to the subscription's lifecycle URL."""
        path = f"/_admin/subscriptions/{quote(subscription_id, safe='')}/lifecycle"
        self._call("POST", path, json={"event": event})

    def expire_subscription(self: _Admin, subscription_id: str) -> None:
        """Let the subscription lapse now: no more notifications, renewing it is a 404."""
        self._call("POST", f"/_admin/subscriptions/{quote(subscription_id, safe='')}/expire")

    def control_notifications(
        self: _Admin, *, drop: int | None = None, duplicate: int | None = None
    ) -> None:
        """Drop (never send) or send twice the next `drop` / `duplicate` notifications."""
        self._call("PUT", "/_admin/notifications", json={"drop": drop, "duplicate": duplicate})

    def notification_stats(self: _Admin) -> NotificationStats:
        return NotificationStats.model_validate(self._json("GET", "/_admin/notifications"))

    def reset_notification_stats(self: _Admin) -> None:
        self._call("POST", "/_admin/notifications/reset")
