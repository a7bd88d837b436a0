"""Graph's /v1.0/subscriptions: create (after the handshake), read, renew and delete."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mailsync.fakes.microsoft.errors import GraphFault, graph_error
from mailsync.fakes.microsoft.graph import authorize
from mailsync.fakes.microsoft.odata import GraphCall
from mailsync.fakes.microsoft.state import FakeMicrosoftState
from mailsync.fakes.microsoft.subscriptions import MAX_MINUTES, FakeSubscription

# users/{upn}/messages, users('{upn}')/messages or me/messages, optionally of one folder
# (mailFolders('inbox')/messages or mailFolders/inbox/messages).
_RESOURCE = re.compile(
    r"^/?(?:users/(?P<user>[^/()']+)|users\('(?P<quoted>[^']+)'\)|(?P<me>me))"
    r"(?:/mailFolders(?:\('(?P<qfolder>[^']+)'\)|/(?P<folder>[^/]+)))?/messages$",
    re.IGNORECASE,
)
_CHANGE_TYPES = frozenset({"created", "updated", "deleted"})


def subscriptions_router(fake: FakeMicrosoftState) -> APIRouter:
    router = APIRouter(prefix="/v1.0")
    subscriptions = fake.subscriptions

    @router.post("/subscriptions")
    async def create(request: Request) -> Response:
        try:
            body = await _body(request)
            match = _RESOURCE.match(str(body.get("resource", "")))
            if match is None:
                raise GraphFault(
                    400, "ExtensionError", "Operation: Create; Exception: [Status Code: BadRequest]"
                )
            user = match["user"] or match["quoted"]
            call = GraphCall(fake, request, user, match["folder"] or match["qfolder"])
            mailbox = authorize(call)
            folder_key = None
            if call.folder is not None:
                with fake.lock:
                    folder = mailbox.resolve_folder(call.folder)
                if folder is None:
                    raise GraphFault(404, "ErrorItemNotFound", "The folder was not found.")
                folder_key = folder.key
            types = frozenset(t.strip() for t in str(body.get("changeType", "")).split(","))
            if not types or not types <= _CHANGE_TYPES:
                raise GraphFault(400, "ValidationError", "changeType is invalid.")
            url = body.get("notificationUrl")
            lifecycle = body.get("lifecycleNotificationUrl")
            for value in (url, lifecycle):
                if value is not None and (
                    not isinstance(value, str) or not value.startswith(("https://", "http://"))
                ):
                    raise GraphFault(400, "ValidationError", "The notification URL is invalid.")
            if url is None:
                raise GraphFault(400, "ValidationError", "notificationUrl is required.")
            client_state = body.get("clientState")
            if client_state is not None and (
                not isinstance(client_state, str) or len(client_state) > 128
            ):
                raise GraphFault(400, "ValidationError", "clientState is at most 128 characters.")
            expires = parse_expiration(body.get("expirationDateTime"), time.time())
            token = fake.lookup_access_token(_bearer(request))
            assert token is not None  # authorize() checked it
            # The handshake runs outside every lock: the receiver may call us back meanwhile.
            await run_in_threadpool(subscriptions.validate, url)
            if lifecycle:
                await run_in_threadpool(subscriptions.validate, lifecycle)
            subscription = FakeSubscription(
                id=str(uuid.uuid4()),
                address=mailbox.address,
                object_id=mailbox.object_id,
                tenant_id=mailbox.tenant_id,
                client_id=token.client_id,
                resource=str(body["resource"]),
                folder_key=folder_key,
                change_types=types,
                notification_url=url,
                lifecycle_url=lifecycle,
                client_state=client_state,
                expires_at=expires,
            )
            subscriptions.add(subscription)
            return JSONResponse(subscription.view(), status_code=201)
        except GraphFault as exc:
            return graph_error(request, exc)

    @router.get("/subscriptions/{subscription_id}")
    def read(subscription_id: str, request: Request) -> Response:
        try:
            return JSONResponse(_owned(fake, request, subscription_id).view())
        except GraphFault as exc:
            return graph_error(request, exc)

    @router.patch("/subscriptions/{subscription_id}")
    async def renew(subscription_id: str, request: Request) -> Response:
        try:
            subscription = _owned(fake, request, subscription_id)
            body = await _body(request)
            subscription.expires_at = parse_expiration(body.get("expirationDateTime"), time.time())
            return JSONResponse(subscription.view())
        except GraphFault as exc:
            return graph_error(request, exc)

    @router.delete("/subscriptions/{subscription_id}")
    def remove(subscription_id: str, request: Request) -> Response:
        try:
            _owned(fake, request, subscription_id)
            subscriptions.remove(subscription_id)
            return Response(status_code=204)
        except GraphFault as exc:
            return graph_error(request, exc)

    return router


def parse_expiration(value: Any, now: float) -> float:
    """An expirationDateTime as epoch seconds, within Graph's bounds, or a 400."""
    if not isinstance(value, str):
        raise GraphFault(400, "ValidationError", "expirationDateTime is required.")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise GraphFault(
            400, "ValidationError", f"Cannot convert '{value}' to a DateTimeOffset."
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    epoch = moment.timestamp()
    if epoch <= now:
        raise GraphFault(400, "ValidationError", "Subscription expiration must be in the future.")
    if epoch > now + MAX_MINUTES * 60 + 60:  # a minute of clock skew forgiven
        raise GraphFault(
            400,
            "ValidationError",
            f"Subscription expiration can only be {MAX_MINUTES} minutes in the future.",
        )
    return epoch


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _owned(fake: FakeMicrosoftState, request: Request, subscription_id: str) -> FakeSubscription:
    """The live subscription, if the bearer token's app and tenant made it."""
    info = fake.lookup_access_token(_bearer(request))
    if info is None or info.expires_at <= time.time():
        raise GraphFault(401, "InvalidAuthenticationToken", "Access token validation failure.")
    subscription = fake.subscriptions.get(subscription_id, time.time())
    if (info.tenant_id, info.client_id) != (subscription.tenant_id, subscription.client_id):
        raise GraphFault(404, "ResourceNotFound", "The object was not found.")
    return subscription


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise GraphFault(400, "BadRequest", "Unable to read JSON request payload.") from exc
    if not isinstance(body, dict):
        raise GraphFault(400, "BadRequest", "Unable to read JSON request payload.")
    return body
