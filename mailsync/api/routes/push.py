"""`POST /v1/push/microsoft` (and its lifecycle URL): Graph's change notifications.

No API key: Graph proves itself by each subscription's clientState secret. A request with any
item whose clientState is not its subscription's gets 401 and starts nothing. The answer
comes fast (Graph wants a 2xx within 3 s): verifying, recording and at most one Prefect call
per mailbox, since a burst of notifications is coalesced into the mailbox's one queued sync.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response

from mailsync.api.deps import OrchestratorDep, SessionDep, SettingsDep
from mailsync.api.errors import ApiError
from mailsync.core.push import coalesce
from mailsync.core.push import graph_notifications as graph
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import utcnow
from mailsync.orchestration.push_jobs import start_push_sync

router = APIRouter(prefix="/v1/push", tags=["push"])

# Graph's validation tokens are short; anything far longer is not Graph's.
_MAX_TOKEN = 1024


async def _raw_body(request: Request) -> bytes:
    return await request.body()


RawBody = Annotated[bytes, Depends(_raw_body)]


def _handshake(request: Request) -> Response | None:
    """Graph's validation request: echo validationToken as text/plain (within 10 s)."""
    token = request.query_params.get("validationToken")
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


@router.post("/microsoft", status_code=202, summary="Microsoft Graph change notifications")
@router.post(
    "/microsoft/lifecycle", status_code=202, summary="Microsoft Graph lifecycle notifications"
)
def microsoft(
    request: Request,
    raw: RawBody,
    session: SessionDep,
    settings: SettingsDep,
    orchestrator: OrchestratorDep,
) -> Any:
    handshake = _handshake(request)
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
