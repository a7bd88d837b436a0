"""The consent flow: `POST /v1/mailboxes/connect` starts it, the provider sends the user back
to `GET /v1/oauth/callback`, which redirects to the application's redirect_uri."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from mailsync.api.deps import MailboxWriter, NowDep, SessionDep, SettingsDep
from mailsync.api.errors import ApiError, from_error
from mailsync.api.mailbox_schemas import ConnectEnvelope, ConnectRequest
from mailsync.api.schemas import ErrorEnvelope
from mailsync.core import consent
from mailsync.db.crypto import CredentialBox
from mailsync.errors import ConsentInputError, UnknownStateError

router = APIRouter(tags=["mailboxes"])

_CONNECT_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": text}
    for status, text in {
        400: "invalid_request: bad body, a redirect_uri not on the allow-list, a provider "
        "whose consent is not set up, a mailbox_id of no mailbox of this workspace (`param` "
        "names the field)",
        401: "invalid_key",
        403: "insufficient_permissions: the key lacks write:mailboxes",
    }.items()
}
_CALLBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    302: {
        "description": "To the flow's redirect_uri with `mailbox_id`, or with `error` and "
        "`error_description` (access_denied, invalid_scope, invalid_request, server_error, "
        "temporarily_unavailable)"
    },
    400: {
        "model": ErrorEnvelope,
        "description": "invalid_request: the state is missing, unknown or forged (there is "
        "no trusted redirect_uri to go back to)",
    },
}


@router.post("/v1/mailboxes/connect", status_code=201, response_model=ConnectEnvelope,
             responses=_CONNECT_ERRORS, summary="Start connecting a mailbox")  # fmt: skip
def connect_mailbox(
    body: ConnectRequest,
    principal: MailboxWriter,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> dict[str, Any]:
    """Send the user to `authorization_url` (the provider's consent screen) within 10 minutes;
    they come back to `redirect_uri` with `mailbox_id` (or `error`). With `mailbox_id`, the
    flow re-authorizes that mailbox: same id, active again, its sync state started afresh."""
    try:
        config = consent.ConsentConfig.from_settings(settings)
        started = consent.begin(
            session, CredentialBox(settings.fernet_key()), config, principal.workspace_id,
            body.provider, body.redirect_uri, body.login_hint, body.mailbox_id, now(),
        )  # fmt: skip
    except ConsentInputError as exc:
        raise from_error(exc, param=exc.param) from exc
    session.commit()
    return {
        "data": {"authorization_url": started.authorization_url, "expires_at": started.expires_at}
    }


@router.get("/v1/oauth/callback", response_class=RedirectResponse, status_code=302,
            responses=_CALLBACK_RESPONSES, summary="Consent callback (the providers')")  # fmt: skip
def oauth_callback(request: Request, settings: SettingsDep, now: NowDep) -> RedirectResponse:
    """Where Google and Microsoft send the user after consent (register
    MAILSYNC_PUBLIC_URL/v1/oauth/callback with them). Public: the state is the credential."""
    params = {k: v[:4096] for k, v in request.query_params.items()}
    try:
        target = consent.complete(
            settings.resolved_database_url, CredentialBox(settings.fernet_key()),
            consent.ConsentConfig.from_settings(settings), params, now(),
        )  # fmt: skip
    except UnknownStateError as exc:
        raise ApiError(400, "invalid_request", exc.public_message, param="state") from exc
    return RedirectResponse(target, status_code=302)
