"""FastAPI dependencies as `Annotated` aliases: settings, database session, caller, scopes.

Request quotas (see ratelimit.py): a key that fails authentication counts against the client
address (429 instead of 401 once that is spent); `EmailReader` counts the request against the
key's own quota. The sync trigger checks its scope itself and reports the sync quota instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, NoReturn

from fastapi import Depends, Request
from sqlmodel import Session

from mailsync.api.errors import ApiError
from mailsync.api.ratelimit import get_rate_limit, meter_address, meter_key, note_key_checked
from mailsync.core.apikeys import Principal, authenticate
from mailsync.db import get_engine
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_orchestrator(request: Request) -> Orchestrator:
    orchestrator: Orchestrator = request.app.state.orchestrator
    return orchestrator


def get_now(request: Request) -> Callable[[], datetime]:
    """The API's clock for time rules (a consent flow's expiry, lag_seconds); tests move it."""
    now: Callable[[], datetime] = request.app.state.now
    return now


SettingsDep = Annotated[Settings, Depends(get_settings)]
NowDep = Annotated[Callable[[], datetime], Depends(get_now)]
OrchestratorDep = Annotated[Orchestrator, Depends(get_orchestrator)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with Session(get_engine(settings.resolved_database_url), expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="mailsync"'}


def _unauthorized(request: Request, message: str) -> NoReturn:
    # A failed attempt counts against the client address (unless the request was already
    # counted there, as the middleware does for requests without an Authorization header);
    # past the address quota the answer is 429, which throttles key guessing.
    if get_rate_limit(request) is None:
        meter_address(request)
    raise ApiError(401, "invalid_key", message, headers=_UNAUTHORIZED)


def get_principal(request: Request, session: SessionDep) -> Principal:
    note_key_checked(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        _unauthorized(request, "missing Authorization header")
    if scheme.lower() != "bearer" or not token.strip():
        _unauthorized(request, "Authorization must be 'Bearer <api key>'")
    principal = authenticate(session, token.strip())
    if principal is None:
        _unauthorized(request, "invalid, revoked or expired API key")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_metered_principal(request: Request, principal: PrincipalDep) -> Principal:
    """The caller, once the request took a token of its key's quota (429 when none is left)."""
    meter_key(request, principal.key_id)
    return principal


MeteredPrincipalDep = Annotated[Principal, Depends(get_metered_principal)]


def check_scope(principal: Principal, any_of: tuple[str, ...]) -> Principal:
    if not principal.scopes.intersection(any_of):
        raise ApiError(
            403,
            "insufficient_permissions",
            f"this API key lacks the {' or '.join(any_of)} permission",
        )
    return principal


def require_metered_scope(*any_of: str) -> Callable[[Principal], Principal]:
    """`require_scope`, after counting the request against the key's quota (403s count)."""

    def check(principal: MeteredPrincipalDep) -> Principal:
        return check_scope(principal, any_of)

    return check


EmailReader = Annotated[Principal, Depends(require_metered_scope("read:email", "write:email"))]
MailboxReader = Annotated[
    Principal, Depends(require_metered_scope("read:mailboxes", "write:mailboxes"))
]
MailboxWriter = Annotated[Principal, Depends(require_metered_scope("write:mailboxes"))]
