"""Graph change-notification subscriptions on a mailbox's messages, and the notifications' JSON.

The subscription is on `users/{upn}/messages` (every folder: a change outside the synced
folders costs one quiet incremental sync), for created, updated and deleted messages, with a
lifecycle URL so Graph can say it needs reauthorizing, removed the subscription or missed
notifications. Its clientState is a secret: it is sent here and compared on every
notification, never logged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from mailsync.providers.base import ProviderEndpoints, ProviderError, TransientProviderError
from mailsync.providers.microsoft.connections import ssl_context
from mailsync.providers.microsoft.credentials import validate_credentials
from mailsync.providers.microsoft.errors import _Retryable, _Throttled, raise_for_graph
from mailsync.providers.microsoft.tokens import Tokens

CHANGE_TYPES = "created,updated,deleted"


@dataclass(frozen=True)
class Subscription:
    id: str
    expires_at: datetime


@dataclass(frozen=True)
class GraphNotification:
    """One item of a notification POST: a change, or a lifecycle event (`lifecycle_event`)."""

    subscription_id: str
    client_state: str | None
    change_type: str | None = None
    lifecycle_event: str | None = None


def parse_notifications(body: Any) -> list[GraphNotification] | None:
    """The items of Graph's `{"value": [...]}`; None when the body is not that shape."""
    if not isinstance(body, dict) or not isinstance(body.get("value"), list):
        return None
    items = []
    for item in body["value"]:
        if not isinstance(item, dict) or not isinstance(item.get("subscriptionId"), str):
            return None
        state = item.get("clientState")
        change = item.get("changeType")
        event = item.get("lifecycleEvent")
        items.append(
            GraphNotification(
                subscription_id=item["subscriptionId"][:200],
                client_state=state if isinstance(state, str) else None,
                change_type=change if isinstance(change, str) else None,
                lifecycle_event=event if isinstance(event, str) else None,
            )
        )
    return items


class GraphSubscriptions:
    """Create, renew and delete one mailbox's subscriptions, with its credentials."""

    def __init__(
        self,
        address: str,
        credentials: dict[str, Any],
        endpoints: ProviderEndpoints,
        *,
        auth_state: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        checked = validate_credentials(credentials)
        host = endpoints.microsoft_authority_host.rstrip("/")
        self._tokens = Tokens(
            checked, f"{host}/{checked['tenant_id']}", endpoints.ca_bundle, timeout, auth_state
        )
        self._resource = f"users/{quote(address, safe='@')}/messages"
        self._http = httpx.Client(
            base_url=endpoints.graph_api_url.rstrip("/") + "/",
            verify=ssl_context(endpoints.ca_bundle),
            trust_env=False,
            # Creation waits for Graph's handshake with us (up to 10 s).
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            headers={"Accept": "application/json"},
        )

    def create(
        self, notification_url: str, lifecycle_url: str, client_state: str, expires_at: datetime
    ) -> Subscription:
        body = {
            "changeType": CHANGE_TYPES,
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "resource": self._resource,
            "expirationDateTime": _iso(expires_at),
            "clientState": client_state,
        }
        return _subscription(self._send("POST", "subscriptions", body))

    def renew(self, subscription_id: str, expires_at: datetime) -> Subscription:
        """ProviderError (404) when Graph no longer has it: create another."""
        body = {"expirationDateTime": _iso(expires_at)}
        return _subscription(self._send("PATCH", _path(subscription_id), body))

    def delete(self, subscription_id: str) -> None:
        """Gone already counts as deleted."""
        try:
            self._send("DELETE", _path(subscription_id), None)
        except ProviderError as exc:
            if "404" not in str(exc):
                raise

    def auth_state(self) -> str | None:
        return self._tokens.auth_state()

    def close(self) -> None:
        self._http.close()
        self._tokens.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            token = self._tokens.access_token()
            headers = {"Authorization": f"Bearer {token}", "client-request-id": str(uuid.uuid4())}
            response = self._http.request(method, path, json=body, headers=headers)
            if response.status_code == 204:
                return {}
            if response.status_code in (200, 201):
                answer = response.json()
                if isinstance(answer, dict):
                    return answer
                raise _Retryable("Microsoft Graph sent an unexpected body")
            raise_for_graph(response)
        except httpx.TransportError as exc:
            raise TransientProviderError(
                f"could not reach Microsoft Graph ({type(exc).__name__})"
            ) from exc
        except (_Throttled, _Retryable) as exc:
            raise TransientProviderError(str(exc), retry_after=exc.retry_after) from exc


def _path(subscription_id: str) -> str:
    return f"subscriptions/{quote(subscription_id, safe='')}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _subscription(body: dict[str, Any]) -> Subscription:
    try:
        expires = datetime.fromisoformat(str(body["expirationDateTime"]).replace("Z", "+00:00"))
        return Subscription(id=str(body["id"]), expires_at=expires)
    except (KeyError, ValueError) as exc:
        raise ProviderError("Microsoft Graph answered a subscription without id or expiry") from exc
