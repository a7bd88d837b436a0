"""`POST /v1/email/sync` and `GET /v1/email/sync/{job_id}`, as the spec describes them."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlmodel import Session

from mailsync.api.deps import (
    EmailReader,
    OrchestratorDep,
    PrincipalDep,
    SessionDep,
    check_scope,
)
from mailsync.api.errors import ApiError, from_error
from mailsync.api.ratelimit import RateLimitInfo, set_rate_limit
from mailsync.api.schemas import ErrorEnvelope, JobCreatedEnvelope, JobEnvelope, SyncRequest
from mailsync.core.apikeys import Principal
from mailsync.core.jobs import store as jobstore
from mailsync.core.rules import idempotency
from mailsync.db.tables import SyncJob, new_id
from mailsync.errors import (
    InvalidIdempotencyKey,
)
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings

router = APIRouter(prefix="/v1/email/sync", tags=["email sync"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": text}
    for status, text in {
        400: "invalid_request: malformed JSON, unknown field or wrong value",
        401: "invalid_key: missing, malformed, unknown, revoked or expired API key",
        403: "insufficient_permissions: missing scope, or no mailbox connected",
        409: "sync_in_progress: a full sync of a requested provider is queued or running "
        "(error.job_id names it); or idempotency_key_in_use",
        413: "payload_too_large",
        422: "idempotency_key_reused: the Idempotency-Key was used with another body",
        429: "rate_limited: more than 6 on-demand syncs in the last hour (see Retry-After)",
        503: "service_unavailable: the orchestrator could not take the job",
    }.items()
}


_GET_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _ERRORS[401],
    403: _ERRORS[403],
    404: {"model": ErrorEnvelope, "description": "not_found: unknown job, or another workspace's"},
}


def _describe(error: Any) -> tuple[str, str]:
    field = ".".join(str(p) for p in error.get("loc", ())) or "body"
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return field, f"unknown field '{field}'"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return field, f"{field} must be one of {expected}"
    if kind in ("string_type", "literal_error") or "type" in kind:
        return field, f"{field} must be a string"
    return field, f"{field}: {error.get('msg', 'invalid value')}"


async def _parse(request: Request) -> SyncRequest:
    raw = await request.body()
    if not raw.strip():
        return SyncRequest()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise ApiError(
            400, "invalid_request", "the body must be JSON (Content-Type: application/json)"
        )
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_request", f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # the decoder's recursion, from arrays or objects nested deep
        raise ApiError(400, "invalid_request", "the body's JSON is nested too deeply") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    try:
        return SyncRequest.model_validate(body)
    except ValidationError as exc:
        field, message = _describe(exc.errors()[0])
        raise ApiError(400, "invalid_request", message, param=field) from exc


def _report_quota(
    request: Request, session: Session, orchestrator: Orchestrator, workspace_id: str
) -> None:
    """X-RateLimit-* of this endpoint describe the workspace's on-demand sync quota."""
    state = orchestrator.admission.quota_state(session, workspace_id)
    set_rate_limit(request, RateLimitInfo(state.limit, state.remaining, state.reset_epoch))


def _sync_caller(
    request: Request, principal: PrincipalDep, session: SessionDep, orchestrator: OrchestratorDep
) -> Principal:
    # Runs before the scope check and the body, so even a 403 or a 400 reports the quota.
    _report_quota(request, session, orchestrator, principal.workspace_id)
    return check_scope(principal, ("write:email",))


SyncCaller = Annotated[Principal, Depends(_sync_caller)]


@router.post(
    "",
    status_code=202,
    response_model=JobCreatedEnvelope,
    responses=_ERRORS,
    summary="Trigger email sync",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": SyncRequest.model_json_schema()}},
        }
    },
)
def trigger_sync(
    request: Request,
    principal: SyncCaller,
    body: Annotated[SyncRequest, Depends(_parse)],
    session: SessionDep,
    orchestrator: OrchestratorDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="A UUID; retries with the same key and body within 24 h replay the "
            "first response instead of starting another sync.",
        ),
    ] = None,
) -> Any:
    """Enqueue an immediate sync of the workspace's connected mailboxes.

    Checks run in this order: authentication, validation (body, scope, connected mailboxes),
    idempotency, 409 sync_in_progress, 429 rate_limited, then the job is created.
    """
    # A plain def: FastAPI runs it in its thread pool, so the blocking database and Prefect
    # calls never stall the event loop. The body is read by the async dependency, after auth.
    workspace_id = principal.workspace_id
    jobstore.build_job(session, workspace_id, body.mode, body.provider)  # NoMailboxError: 403
    settings = orchestrator.admission.settings
    key = _idempotency_key(idempotency_key)
    job_id = new_id("sync")  # named in the key's record from its claim on (idempotency.begin)
    if key is not None:
        session.rollback()  # give the connection back while waiting on another request
        replay = _begin_idempotent(settings, workspace_id, key, body, job_id)
        if replay is not None:
            _report_quota(request, session, orchestrator, workspace_id)
            return JSONResponse(
                replay.body, replay.status_code, headers={"Idempotent-Replayed": "true"}
            )
    try:
        job = orchestrator.trigger(
            session,
            workspace_id,
            body.mode,
            body.provider,
            job_id=job_id,
        )
    except BaseException:
        # The error handler answers it (mailsync/api/errors.py: 409, 429, 503 by its code).
        if key is not None:
            idempotency.abandon(settings.resolved_database_url, workspace_id, key)
        _report_quota(request, session, orchestrator, workspace_id)
        raise
    response = {"data": jobstore.public_view(job, brief=True)}
    if key is not None:
        idempotency.complete(
            settings.resolved_database_url, workspace_id, key, 202, response, job.id
        )
    _report_quota(request, session, orchestrator, workspace_id)
    return response


def _idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        return idempotency.parse_key(raw)
    except InvalidIdempotencyKey as exc:
        raise from_error(exc, param="Idempotency-Key") from exc


def _begin_idempotent(
    settings: Settings, workspace_id: str, key: str, body: SyncRequest, job_id: str
) -> idempotency.Replay | None:
    # IdempotencyKeyReused (422), IdempotencyKeyInUse (409): answered by the error handler.
    return idempotency.begin(
        settings.resolved_database_url,
        workspace_id,
        key,
        idempotency.fingerprint(body.model_dump()),
        ttl_seconds=settings.idempotency_ttl_seconds,
        job_id=job_id,
    )


@router.get(
    "/{job_id}",
    response_model=JobEnvelope,
    responses=_GET_ERRORS,
    summary="Get a sync job",
)
def get_sync_job(
    job_id: str, principal: EmailReader, session: SessionDep, orchestrator: OrchestratorDep
) -> dict[str, Any]:
    job = session.get(SyncJob, job_id) if len(job_id) <= 40 else None
    if job is None or job.workspace_id != principal.workspace_id:
        raise ApiError(404, "not_found", f"no sync job with id '{job_id[:64]}'")
    orchestrator.refresh(session, job)
    session.commit()
    return {"data": jobstore.public_view(job)}
