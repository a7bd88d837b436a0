"""`POST /v1/email/sync` and `GET /v1/email/sync/{job_id}`, as the spec describes them."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from mailsync import jobstore
from mailsync.api.deps import EmailReader, EmailWriter, OrchestratorDep, SessionDep
from mailsync.api.errors import ApiError
from mailsync.api.schemas import ErrorEnvelope, JobCreatedEnvelope, JobEnvelope, SyncRequest
from mailsync.jobs import OrchestratorUnavailableError
from mailsync.models import SyncJob

router = APIRouter(prefix="/v1/email/sync", tags=["email sync"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": text}
    for status, text in {
        400: "invalid_request: malformed JSON, unknown field or wrong value",
        401: "invalid_key: missing, malformed, unknown, revoked or expired API key",
        403: "insufficient_permissions: missing scope, or no mailbox connected",
        413: "payload_too_large",
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
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    try:
        return SyncRequest.model_validate(body)
    except ValidationError as exc:
        field, message = _describe(exc.errors()[0])
        raise ApiError(400, "invalid_request", message, param=field) from exc


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
    principal: EmailWriter,
    body: Annotated[SyncRequest, Depends(_parse)],
    session: SessionDep,
    orchestrator: OrchestratorDep,
) -> dict[str, Any]:
    """Enqueue an immediate sync of the workspace's connected mailboxes."""
    # A plain def: FastAPI runs it in its thread pool, so the blocking database and Prefect
    # calls never stall the event loop. The body is read by the async dependency, after auth.
    try:
        job = orchestrator.trigger(session, principal.workspace_id, body.mode, body.provider)
    except jobstore.NoMailboxError as exc:
        raise ApiError(403, "insufficient_permissions", str(exc)) from exc
    except OrchestratorUnavailableError as exc:
        raise ApiError(
            503,
            "service_unavailable",
            "the sync could not be scheduled; retry shortly",
            headers={"Retry-After": "5"},
        ) from exc
    return {"data": jobstore.public_view(job, brief=True)}


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
