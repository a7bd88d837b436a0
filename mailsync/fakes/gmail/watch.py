"""users.watch and users.stop over REST, Google's signing certificates, and the Pub/Sub admin."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from mailsync.fakes.gmail.errors import ApiResponse, google_error, json_response, unauthenticated
from mailsync.fakes.gmail.pubsub import PushSubscription
from mailsync.fakes.gmail.state import FakeGmail

_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")


class PushSubscriptionIn(BaseModel):
    name: str = Field(pattern=r"^projects/[^/]+/subscriptions/[^/]+$")
    topic: str = Field(pattern=r"^projects/[^/]+/topics/[^/]+$")
    endpoint: str = Field(pattern=r"^https?://")
    service_account: str
    audience: str | None = None


class PushControl(BaseModel):
    drop: int | None = Field(default=None, ge=0)
    duplicate: int | None = Field(default=None, ge=0)


def watch_router(fake: FakeGmail) -> APIRouter:
    """Registered before the REST catch-all, which knows GETs only."""
    router = APIRouter()
    pubsub = fake.pubsub

    def caller(request: Request, user: str) -> ApiResponse | str:
        box = fake.oauth.authenticate(request.headers.get("authorization"))
        if box is None:
            return unauthenticated()
        if user != "me" and user.lower() != box.address.lower():
            return google_error(403, f"Delegation denied for {box.address}", "forbidden")
        return box.address

    @router.post("/gmail/v1/users/{user}/watch")
    async def watch(user: str, request: Request) -> Response:
        who = caller(request, user)
        if isinstance(who, ApiResponse):
            return json_response(who)
        try:
            body = await request.json()
        except ValueError:
            return json_response(google_error(400, "Invalid JSON payload received.", "badRequest"))
        topic = body.get("topicName") if isinstance(body, dict) else None
        if not isinstance(topic, str) or not _TOPIC.match(topic):
            message = "Invalid topicName does not match projects/SOME_PROJECT/topics/SOME_TOPIC"
            return json_response(google_error(400, message, "invalidArgument"))
        if not pubsub.topic_known(topic):
            # Gmail publishes a test message at watch time: an unknown topic (or one Gmail may
            # not publish to) fails it.
            message = f"Error sending test message to Cloud PubSub {topic} : Resource not found"
            return json_response(google_error(404, message, "notFound"))
        expires_ms = pubsub.watch(who, topic)
        with fake.lock:
            history_id = fake.mailboxes[who.lower()].history_id
        return json_response(
            ApiResponse(200, {"historyId": str(history_id), "expiration": str(expires_ms)})
        )

    @router.post("/gmail/v1/users/{user}/stop")
    def stop(user: str, request: Request) -> Response:
        who = caller(request, user)
        if isinstance(who, ApiResponse):
            return json_response(who)
        pubsub.stop(who)
        return Response(status_code=204)

    @router.get("/oauth2/v1/certs")
    def certs() -> Response:
        return JSONResponse(pubsub.signer.certs(), headers={"Cache-Control": "public, max-age=300"})

    @router.put("/_admin/pubsub/subscriptions")
    def put_subscription(spec: PushSubscriptionIn) -> dict[str, Any]:
        pubsub.put_subscription(PushSubscription(**spec.model_dump()))
        return spec.model_dump()

    @router.delete("/_admin/pubsub/subscriptions/{name:path}")
    def delete_subscription(name: str) -> Response:
        found = pubsub.delete_subscription(name)
        return Response(status_code=204 if found else 404)

    @router.put("/_admin/pubsub/control")
    def control(spec: PushControl) -> dict[str, int]:
        return pubsub.control(spec.drop, spec.duplicate)

    @router.get("/_admin/pubsub")
    def view() -> dict[str, Any]:
        return pubsub.view()

    return router
