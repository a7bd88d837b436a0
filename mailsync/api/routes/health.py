"""Liveness and readiness: the database and the Prefect API must answer."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from mailsync.api.deps import OrchestratorDep, SessionDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=None)
def health(session: SessionDep, orchestrator: OrchestratorDep) -> dict[str, Any] | JSONResponse:
    checks: dict[str, str] = {}
    try:
        session.exec(sa.text("SELECT 1"))  # type: ignore[call-overload]
        checks["database"] = "ok"
    except sa.exc.SQLAlchemyError:
        checks["database"] = "unavailable"
    checks["prefect"] = "ok" if orchestrator.healthy() else "unavailable"
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ok else "degraded", "checks": checks}
    return body if ok else JSONResponse(body, status_code=503)
