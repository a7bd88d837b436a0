"""`/v1/webhooks`: a workspace's webhook endpoints, their secrets and their delivery log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Response
from ulid import ULID

from mailsync.api.deps import OrchestratorDep, SessionDep, SettingsDep, require_metered_scope
from mailsync.api.errors import ApiError, from_error
from mailsync.api.schemas import ErrorEnvelope
from mailsync.api.webhook_schemas import (
    DeliveryEnvelope,
    DeliveryList,
    NoticeList,
    SecretRotation,
    WebhookCreate,
    WebhookEndpointEnvelope,
    WebhookEndpointList,
    WebhookSecretEnvelope,
)
from mailsync.core.apikeys import Principal
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import WebhookEndpoint, iso
from mailsync.errors import UnknownEventTypeError, UnsafeUrlError
from mailsync.settings import Settings
from mailsync.webhooks import outbox, ssrf, store

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

Writer = Annotated[Principal, Depends(require_metered_scope("write:webhooks"))]
Reader = Annotated[Principal, Depends(require_metered_scope("read:webhooks", "write:webhooks"))]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "invalid_request: bad body, an unknown event type, or a refused url",
        401: "invalid_key",
        403: "insufficient_permissions: the key lacks write:webhooks (or read:webhooks)",
        404: "not_found: unknown id, or another workspace's",
        409: "endpoint_disabled: enable the endpoint before replaying to it",
    }
    return {s: {"model": ErrorEnvelope, "description": text[s]} for s in statuses}


def _endpoint(session: SessionDep, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
    endpoint = store.get_endpoint(session, principal.workspace_id, endpoint_id)
    if endpoint is None:
        raise ApiError(404, "not_found", f"no webhook endpoint with id '{endpoint_id[:64]}'")
    return endpoint


def _box(settings: Settings) -> CredentialBox:
    return CredentialBox(settings.fernet_key())


@router.post(
    "",
    status_code=201,
    response_model=WebhookSecretEnvelope,
    responses=_errors(400, 401, 403),
    summary="Create a webhook endpoint",
)
def create_webhook(
    body: WebhookCreate, principal: Writer, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """The signing secret is in this response only."""
    try:
        ssrf.vet(
            body.url,
            allow_loopback=settings.webhook_allow_loopback,
            resolver=ssrf.system_resolver,
        )
    except UnsafeUrlError as exc:
        raise from_error(exc, param="url") from exc
    try:
        endpoint, secret = store.create_endpoint(
            session,
            _box(settings),
            principal.workspace_id,
            body.url,
            body.events,
            max_endpoints=settings.webhook_max_endpoints,
        )
    except UnknownEventTypeError as exc:
        raise from_error(exc, param="events") from exc
    session.commit()
    return {"data": {**store.public_view(endpoint), "secret": secret}}


@router.get("", response_model=WebhookEndpointList, responses=_errors(401, 403))
def list_webhooks(principal: Reader, session: SessionDep) -> dict[str, Any]:
    endpoints = store.list_endpoints(session, principal.workspace_id)
    return {"data": [store.public_view(e) for e in endpoints]}


@router.get(
    "/notices",
    response_model=NoticeList,
    responses=_errors(401, 403),
    summary="List webhook.endpoint.disabled notices",
)
def list_notices(principal: Reader, session: SessionDep) -> dict[str, Any]:
    notices = store.list_notices(session, principal.workspace_id)
    return {
        "data": [
            {"id": n.id, "type": n.type, "timestamp": iso(n.created_at), "data": n.payload["data"]}
            for n in notices
        ]
    }


@router.get(
    "/{endpoint_id}", response_model=WebhookEndpointEnvelope, responses=_errors(401, 403, 404)
)
def get_webhook(endpoint_id: str, principal: Reader, session: SessionDep) -> dict[str, Any]:
    return {"data": store.public_view(_endpoint(session, principal, endpoint_id))}


@router.delete(
    "/{endpoint_id}", status_code=204, response_class=Response, responses=_errors(401, 403, 404)
)
def delete_webhook(endpoint_id: str, principal: Writer, session: SessionDep) -> Response:
    store.delete_endpoint(session, _endpoint(session, principal, endpoint_id))
    session.commit()
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=WebhookSecretEnvelope,
    responses=_errors(400, 401, 403, 404),
    summary="Rotate the signing secret",
)
def rotate_secret(
    endpoint_id: str,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    body: Annotated[SecretRotation | None, Body()] = None,
) -> dict[str, Any]:
    """The new secret is in this response only; the old one keeps signing for the overlap."""
    endpoint = _endpoint(session, principal, endpoint_id)
    overlap = body.overlap_seconds if body and body.overlap_seconds is not None else None
    secret = store.rotate_secret(
        session,
        _box(settings),
        endpoint,
        settings.webhook_secret_overlap_seconds if overlap is None else overlap,
    )
    session.commit()
    return {"data": {**store.public_view(endpoint), "secret": secret}}


@router.post(
    "/{endpoint_id}/enable",
    response_model=WebhookEndpointEnvelope,
    responses=_errors(401, 403, 404),
    summary="Enable a disabled endpoint again",
)
def enable_webhook(endpoint_id: str, principal: Writer, session: SessionDep) -> dict[str, Any]:
    endpoint = _endpoint(session, principal, endpoint_id)
    store.enable(session, endpoint)
    session.commit()
    return {"data": store.public_view(endpoint)}


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=DeliveryList,
    responses=_errors(400, 401, 403, 404),
    summary="The endpoint's delivery log",
)
def list_deliveries(
    endpoint_id: str,
    principal: Reader,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> dict[str, Any]:
    """Newest first, each with its attempts (status code, latency, error)."""
    endpoint = _endpoint(session, principal, endpoint_id)
    deliveries = store.list_deliveries(session, endpoint, limit)
    return {"data": store.delivery_views(session, deliveries)}


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=DeliveryEnvelope,
    responses=_errors(401, 403, 404, 409),
    summary="Send a delivery again (same webhook-id)",
)
def replay_delivery(
    delivery_id: str,
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    orchestrator: OrchestratorDep,
) -> dict[str, Any]:
    found = store.get_delivery(session, principal.workspace_id, delivery_id)
    if found is None:
        raise ApiError(404, "not_found", f"no webhook delivery with id '{delivery_id[:64]}'")
    endpoint = _endpoint(session, principal, found.endpoint_id)
    if endpoint.status != "active":
        raise ApiError(
            409, "endpoint_disabled", "the endpoint is disabled; enable it before replaying"
        )
    outbox.replay(session, found, settings.webhook_retry_horizon_seconds)
    session.commit()
    orchestrator.start_delivery_run(f"replay:{ULID()}")
    return {"data": store.delivery_views(session, [found])[0]}
