"""`/v1/mailboxes`: a workspace's connected mailboxes, their state, and disconnecting one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mailsync.api.deps import MailboxReader, MailboxWriter, NowDep, SessionDep, SettingsDep
from mailsync.api.errors import ApiError
from mailsync.api.mailbox_schemas import MailboxEnvelope, MailboxList
from mailsync.api.schemas import ErrorEnvelope
from mailsync.core import mailboxes
from mailsync.core.push import channels
from mailsync.db.crypto import CredentialBox

router = APIRouter(prefix="/v1/mailboxes", tags=["mailboxes"])


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "invalid_key: missing, malformed, unknown, revoked or expired API key",
        403: "insufficient_permissions: the key lacks read:mailboxes (or write:mailboxes)",
        404: "not_found: unknown mailbox, or another workspace's",
        409: "sync_in_progress: a sync of the mailbox is queued or running (error.job_id)",
    }
    return {s: {"model": ErrorEnvelope, "description": text[s]} for s in statuses}


def _not_found(mailbox_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no mailbox with id '{mailbox_id[:64]}'")


@router.get("", response_model=MailboxList, responses=_errors(401, 403), summary="List mailboxes")
def list_mailboxes(principal: MailboxReader, session: SessionDep, now: NowDep) -> dict[str, Any]:
    """Every mailbox of the workspace (disconnected ones too), oldest first."""
    views = mailboxes.list_mailboxes(session, principal.workspace_id, now())
    return {"data": [v.as_dict() for v in views]}


@router.get("/{mailbox_id}", response_model=MailboxEnvelope, responses=_errors(401, 403, 404),
            summary="Get a mailbox")  # fmt: skip
def get_mailbox(
    mailbox_id: str, principal: MailboxReader, session: SessionDep, now: NowDep
) -> dict[str, Any]:
    view = mailboxes.get_mailbox(session, principal.workspace_id, mailbox_id, now())
    if view is None:
        raise _not_found(mailbox_id)
    return {"data": view.as_dict()}


@router.delete("/{mailbox_id}", response_model=MailboxEnvelope,
               responses=_errors(401, 403, 404, 409), summary="Disconnect a mailbox")  # fmt: skip
def disconnect_mailbox(
    mailbox_id: str, principal: MailboxWriter, settings: SettingsDep, now: NowDep
) -> dict[str, Any]:
    """Revokes the grant at the provider where it has a revocation endpoint (Google; Microsoft
    has none for one grant), deletes the credentials and the index; the mailbox stays listed
    as `disconnected` and can be connected again. 409 while a sync of it is queued or running."""
    done = mailboxes.disconnect(
        settings.resolved_database_url,
        CredentialBox(settings.fernet_key()),
        principal.workspace_id,
        mailbox_id,
        mailboxes.provider_revoker(settings.provider_endpoints),
        now,
        stop_push=lambda mailbox: channels.stop(settings, mailbox),
    )  # MailboxSyncingError: 409 (the error handler)
    if done is None:
        raise _not_found(mailbox_id)
    return {"data": done.view.as_dict()}
