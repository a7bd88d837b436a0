"""A workspace's webhook endpoints and their signing secrets (encrypted, shown only once)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, delete, func, select, update

from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    Workspace,
    as_utc,
    iso,
    utcnow,
)
from mailsync.errors import EndpointLimitError, UnknownEventTypeError
from mailsync.webhooks.signing import generate_secret

JOB_COMPLETED = "email.sync.completed"
JOB_FAILED = "email.sync.failed"
ENDPOINT_DISABLED = "webhook.endpoint.disabled"
# A mailbox's grant was refused (core/mailboxes.py): sent once per transition to reauth_required.
MAILBOX_REAUTH_REQUIRED = "mailbox.reauth_required"
# What an endpoint can subscribe to; the disabled notice goes to nobody (it is listed).
SUBSCRIBABLE = (JOB_COMPLETED, JOB_FAILED, MAILBOX_REAUTH_REQUIRED)
# What an endpoint created without `events` gets: the job events it always got (a receiver
# written before mailbox events existed is not sent a type it does not know).
DEFAULT_EVENTS = (JOB_COMPLETED, JOB_FAILED)


def _seal(box: CredentialBox, secret: str) -> str:
    return box.seal({"secret": secret})


def _open(box: CredentialBox, token: str) -> str:
    return str(box.open(token)["secret"])


def normalize_events(events: list[str] | None) -> list[str]:
    if events is None:
        return list(DEFAULT_EVENTS)
    unknown = sorted(set(events) - set(SUBSCRIBABLE))
    if unknown:
        raise UnknownEventTypeError(
            f"unknown event type {unknown[0]!r}; one of {', '.join(SUBSCRIBABLE)}"
        )
    if not events:
        raise UnknownEventTypeError("events must name at least one event type")
    return sorted(set(events))


def create_endpoint(
    session: Session,
    box: CredentialBox,
    workspace_id: str,
    url: str,
    events: list[str] | None,
    *,
    max_endpoints: int = 16,
) -> tuple[WebhookEndpoint, str]:
    """Store an endpoint (its URL already vetted); returns it with its secret, never stored
    in clear. At most `max_endpoints` per workspace (EndpointLimitError), counted under a
    lock on the workspace's row, so concurrent creations cannot pass it together."""
    session.exec(  # type: ignore[call-overload]
        update(Workspace)
        .where(col(Workspace.id) == workspace_id)
        .values(nightly_full_sync=Workspace.nightly_full_sync)
    )
    count = session.exec(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.workspace_id == workspace_id)
    ).one()
    if count >= max_endpoints:
        raise EndpointLimitError(
            f"a workspace has at most {max_endpoints} webhook endpoints; delete one first"
        )
    secret = generate_secret()
    endpoint = WebhookEndpoint(
        workspace_id=workspace_id,
        url=url,
        events=normalize_events(events),
        secret_encrypted=_seal(box, secret),
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def list_endpoints(session: Session, workspace_id: str) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.workspace_id == workspace_id)
    return list(session.exec(query.order_by(col(WebhookEndpoint.created_at))))


def get_endpoint(session: Session, workspace_id: str, endpoint_id: str) -> WebhookEndpoint | None:
    """The endpoint, or None when unknown or another workspace's (both are a 404)."""
    endpoint = session.get(WebhookEndpoint, endpoint_id) if len(endpoint_id) <= 40 else None
    if endpoint is None or endpoint.workspace_id != workspace_id:
        return None
    return endpoint


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    """Remove the endpoint with its deliveries and their log; events stay in the outbox."""
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint.id)
    session.exec(  # type: ignore[call-overload]
        delete(WebhookAttempt).where(col(WebhookAttempt.delivery_id).in_(deliveries))
    )
    session.exec(  # type: ignore[call-overload]
        delete(WebhookDelivery).where(col(WebhookDelivery.endpoint_id) == endpoint.id)
    )
    session.delete(endpoint)


def rotate_secret(
    session: Session, box: CredentialBox, endpoint: WebhookEndpoint, overlap_seconds: int
) -> str:
    """A new secret; the current one keeps signing beside it for the overlap."""
    secret = generate_secret()
    if overlap_seconds > 0:
        endpoint.previous_secret_encrypted = endpoint.secret_encrypted
        endpoint.previous_secret_expires_at = utcnow() + timedelta(seconds=overlap_seconds)
    else:
        endpoint.previous_secret_encrypted = endpoint.previous_secret_expires_at = None
    endpoint.secret_encrypted = _seal(box, secret)
    session.add(endpoint)
    return secret


def signing_secrets(box: CredentialBox, endpoint: WebhookEndpoint) -> list[str]:
    """Every secret that signs now: the current one, and the previous during its overlap."""
    found = [_open(box, endpoint.secret_encrypted)]
    expires = as_utc(endpoint.previous_secret_expires_at)
    if endpoint.previous_secret_encrypted and expires and expires > utcnow():
        found.append(_open(box, endpoint.previous_secret_encrypted))
    return found


def public_view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """What the API shows of an endpoint: never a secret."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": list(endpoint.events),
        "status": endpoint.status,
        "created_at": iso(endpoint.created_at),
        "failing_since": iso(endpoint.failing_since),
        "disabled_at": iso(endpoint.disabled_at),
        "previous_secret_expires_at": iso(_live_expiry(endpoint)),
    }


def _live_expiry(endpoint: WebhookEndpoint) -> Any:
    expires = as_utc(endpoint.previous_secret_expires_at)
    return expires if expires and expires > utcnow() else None


def list_notices(session: Session, workspace_id: str, limit: int = 100) -> list[WebhookEvent]:
    query = (
        select(WebhookEvent)
        .where(WebhookEvent.workspace_id == workspace_id, WebhookEvent.type == ENDPOINT_DISABLED)
        .order_by(col(WebhookEvent.created_at).desc())
        .limit(limit)
    )
    return list(session.exec(query))


def delivery_views(session: Session, deliveries: list[WebhookDelivery]) -> list[dict[str, Any]]:
    """Deliveries as the API shows them, each with its attempt log (oldest attempt first)."""
    ids = [d.id for d in deliveries]
    log: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    types: dict[str, str] = {}
    if ids:
        attempts = session.exec(
            select(WebhookAttempt)
            .where(col(WebhookAttempt.delivery_id).in_(ids))
            .order_by(col(WebhookAttempt.id))
        )
        for attempt in attempts:
            log[attempt.delivery_id].append(
                {
                    "started_at": iso(attempt.started_at),
                    "status_code": attempt.status_code,
                    "latency_ms": attempt.latency_ms,
                    "error": attempt.error,
                }
            )
        event_ids = {d.event_id for d in deliveries}
        found = session.exec(
            select(WebhookEvent.id, WebhookEvent.type).where(col(WebhookEvent.id).in_(event_ids))
        )
        types = {event_id: event_type for event_id, event_type in found}
    return [
        {
            "id": d.id,
            "event_id": d.event_id,
            "event_type": types.get(d.event_id, ""),
            "endpoint_id": d.endpoint_id,
            "status": d.status,
            "attempts": d.attempts,
            "next_attempt_at": iso(d.next_attempt_at),
            "last_status_code": d.last_status_code,
            "delivered_at": iso(d.delivered_at),
            "created_at": iso(d.created_at),
            "attempt_log": log[d.id],
        }
        for d in deliveries
    ]


def list_deliveries(
    session: Session, endpoint: WebhookEndpoint, limit: int = 50
) -> list[WebhookDelivery]:
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
        .order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
        .limit(limit)
    )
    return list(session.exec(query))


def get_delivery(session: Session, workspace_id: str, delivery_id: str) -> WebhookDelivery | None:
    """The delivery, or None when unknown or another workspace's."""
    found = session.get(WebhookDelivery, delivery_id) if len(delivery_id) <= 40 else None
    if found is None:
        return None
    return found if get_endpoint(session, workspace_id, found.endpoint_id) else None


def enable(session: Session, endpoint: WebhookEndpoint) -> None:
    endpoint.status, endpoint.disabled_at, endpoint.failing_since = "active", None, None
    session.add(endpoint)
