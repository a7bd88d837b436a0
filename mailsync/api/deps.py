"""FastAPI dependencies as `Annotated` aliases: settings, database session, caller, scopes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from mailsync.api.errors import ApiError
from mailsync.apikeys import Principal, authenticate
from mailsync.db import get_engine
from mailsync.jobs import Orchestrator
from mailsync.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_orchestrator(request: Request) -> Orchestrator:
    orchestrator: Orchestrator = request.app.state.orchestrator
    return orchestrator


SettingsDep = Annotated[Settings, Depends(get_settings)]
OrchestratorDep = Annotated[Orchestrator, Depends(get_orchestrator)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with Session(get_engine(settings.resolved_database_url), expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="mailsync"'}


def get_principal(request: Request, session: SessionDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise ApiError(401, "invalid_key", "missing Authorization header", headers=_UNAUTHORIZED)
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "invalid_key", "Authorization must be 'Bearer <api key>'", headers=_UNAUTHORIZED
        )
    principal = authenticate(session, token.strip())
    if principal is None:
        raise ApiError(
            401, "invalid_key", "invalid, revoked or expired API key", headers=_UNAUTHORIZED
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_scope(*any_of: str) -> Callable[[Principal], Principal]:
    """A dependency admitting callers whose key holds at least one of `any_of`."""

    def check(principal: PrincipalDep) -> Principal:
        if not principal.scopes.intersection(any_of):
            raise ApiError(
                403,
                "insufficient_permissions",
                f"this API key lacks the {' or '.join(any_of)} permission",
            )
        return principal

    return check


EmailWriter = Annotated[Principal, Depends(require_scope("write:email"))]
EmailReader = Annotated[Principal, Depends(require_scope("read:email", "write:email"))]
