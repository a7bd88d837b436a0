"""The providers' push endpoints: Graph's change notifications, Gmail's Pub/Sub pushes.

No API key: Graph proves itself by each subscription's clientState secret, Pub/Sub by the
OIDC token of our push subscription. A request that does not prove itself gets 401 and starts
nothing. The answer comes fast (Graph wants a 2xx within 3 s, Pub/Sub within its ack
deadline): verifying, recording and at most one Prefect call per mailbox, since a burst of
notifications is coalesced into the mailbox's one queued sync (orchestration/push_jobs.py).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response

from mailsync.api.deps import OrchestratorDep, SessionDep, SettingsDep
from mailsync.api.errors import ApiError
from mailsync.api.schemas import ErrorEnvelope
from mailsync.core.push import coalesce
from mailsync.core.push import gmail_notifications as gmail
from mailsync.core.push import graph_notifications as graph
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import utcnow
from mailsync.errors import PushVerificationError
from mailsync.orchestration.push_jobs import start_push_sync

router = APIRouter(prefix="/v1/push", tags=["push"])

# Graph's validation tokens are short; anything far longer is not Graph's.
_MAX_TOKEN = 1024


async def _raw_body(request: Request) -> bytes:
    return await request.body()


RawBody = Annotated[bytes, Depends(_raw_body)]


def _errors(proof: str) -> dict[int | str, dict[str, Any]]:
    return {
        400: {"model": ErrorEnvelope, "description": "invalid_request: not the provider's body"},
        401: {"model": ErrorEnvelope, "description": f"{proof}: nothing is started"},
    }


_GRAPH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the validation handshake: validationToken echoed",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    **_errors("invalid_client_state: a notification's clientState is not its subscription's"),
}
_GMAIL_RESPONSES = _errors("invalid_push_token: no valid OIDC token of our push subscription")


def _handshake(token: str | None) -> Response | None:
    """Graph's validation request: echo validationToken as text/plain (within 10 s)."""
    if token is None:
        return None
    if len(token) > _MAX_TOKEN:
        raise ApiError(400, "invalid_request", "validationToken is too long")
    return PlainTextResponse(token, headers={"X-Content-Type-Options": "nosniff"})


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_request", "the body is not valid JSON") from exc


@router.post(
    "/microsoft",
    status_code=202,
    responses=_GRAPH_RESPONSES,
    summary="Microsoft Graph change notifications",
)
@router.post(
    "/microsoft/lifecycle",
    status_code=202,
    responses=_GRAPH_RESPONSES,
    summary="Microsoft Graph lifecycle notifications",
)
def microsoft(
    raw: RawBody,
    session: SessionDep,
    settings: SettingsDep,
    orchestrator: OrchestratorDep,
    validation_token: Annotated[
        str | None,
        Query(alias="validationToken", description="Graph's handshake: echoed as text/plain"),
    ] = None,
) -> Any:
    handshake = _handshake(validation_token)
    if handshake is not None:
        return handshake
    items = graph.parse(_json(raw))
    if not items:
        raise ApiError(400, "invalid_request", 'the body must be Graph\'s {"value": [...]}')
    box = CredentialBox(settings.fernet_key())
    verified = [graph.verify(session, box, item) for item in items]
    if any(v is None for v in verified):
        raise ApiError(401, "invalid_client_state", "a notification's clientState is not valid")
    checked = [v for v in verified if v is not None]
    now = utcnow()
    for item in checked:
        coalesce.note_notification(session, item.mailbox.id, now)
        graph.apply_lifecycle(session, item, now)
    session.commit()
    wanted = {v.mailbox.id: v.mailbox for v in checked if v.wants_sync}
    jobs = [start_push_sync(orchestrator, session, mailbox) for mailbox in wanted.values()]
    return {
        "data": {
            "notifications": len(checked),
            "jobs": [job.id for job in jobs if job is not None],
            "coalesced": sum(1 for job in jobs if job is None),
        }
    }


@router.post(
    "/gmail", status_code=202, responses=_GMAIL_RESPONSES, summary="Gmail Pub/Sub push messages"
)
def gmail_push(
    request: Request,
    raw: RawBody,
    session: SessionDep,
    settings: SettingsDep,
    orchestrator: OrchestratorDep,
) -> Any:
    try:
        gmail.verify_token(settings, request.headers.get("authorization"))
    except PushVerificationError as exc:
        raise ApiError(401, exc.code, "the push request's OIDC token is not valid") from exc
    push = gmail.parse_push(_json(raw))
    if push is None:
        raise ApiError(400, "invalid_request", "the body must be a Pub/Sub push of a Gmail watch")
    now = utcnow()
    mailboxes = gmail.mailboxes_for(session, push)
    for mailbox in mailboxes:
        coalesce.note_notification(session, mailbox.id, now)
    session.commit()
    jobs = [start_push_sync(orchestrator, session, mailbox) for mailbox in mailboxes]
    return {
        "data": {
            "notifications": 1,
            "jobs": [job.id for job in jobs if job is not None],
            "coalesced": sum(1 for job in jobs if job is None),
        }
    }
