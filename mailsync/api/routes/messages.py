"""`GET /v1/email/messages` (search and list the live index) and `GET .../{message_id}`."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from mailsync.api.deps import EmailReader, SessionDep
from mailsync.api.errors import ApiError, from_error
from mailsync.api.message_schemas import MessageEnvelope, MessageList, MessageOut
from mailsync.api.schemas import ErrorEnvelope
from mailsync.core.search import ids, store
from mailsync.errors import SearchInputError

router = APIRouter(prefix="/v1/email/messages", tags=["email messages"])

_COMMON: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorEnvelope, "description": "invalid_key: missing or bad API key"},
    403: {"model": ErrorEnvelope, "description": "insufficient_permissions: read:email needed"},
}
_LIST_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorEnvelope,
        "description": "invalid_request: an unknown or repeated parameter, a bad date, limit "
        "out of range, a malformed or foreign cursor, an unusable q (`param` names it)",
    },
    **_COMMON,
}
_GET_ERRORS: dict[int | str, dict[str, Any]] = {
    **_COMMON,
    404: {
        "model": ErrorEnvelope,
        "description": "not_found: unknown message, or another workspace's",
    },
}
_PARAMS = ("q", "mailbox_id", "provider", "from", "to", "label", "after", "before",
           "thread_id", "limit", "cursor")  # fmt: skip
_PROVIDERS = ("gmail", "microsoft")


def _date(raw: str | None, param: str) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.strip())
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise SearchInputError(
            f"{param} must be an ISO 8601 date or date-time, e.g. 2026-11-25T09:30:00Z",
            param=param,
        ) from exc


def _text(raw: str | None, param: str, limit: int = 512) -> str | None:
    if raw is not None and len(raw) > limit:
        raise SearchInputError(f"{param} is longer than {limit} characters", param=param)
    if raw is not None and "\x00" in raw:  # PostgreSQL text cannot hold it
        raise SearchInputError(f"{param} must not contain NUL characters", param=param)
    return raw


def _listing(
    request: Request,
    principal: EmailReader,
    q: Annotated[
        str | None, Query(description='Full text: words AND-ed, "a phrase", word*')
    ] = None,
    mailbox_id: str | None = None,
    provider: Annotated[str | None, Query(description="gmail or microsoft")] = None,
    sender: Annotated[str | None, Query(alias="from", description="Sender address")] = None,
    to: Annotated[str | None, Query(description="A recipient address (to or cc)")] = None,
    label: Annotated[str | None, Query(description="Gmail label id or Graph folder")] = None,
    after: Annotated[str | None, Query(description="ISO 8601; messages at or after it")] = None,
    before: Annotated[str | None, Query(description="ISO 8601; messages before it")] = None,
    thread_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=store.MAX_LIMIT)] = store.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[str, store.Filters, int, str | None]:
    """The caller's filters, after authentication and the scope: 400 for anything unusable."""
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in _PARAMS:
            raise ApiError(
                400, "invalid_request", f"unknown parameter '{name[:64]}'", param=name[:64]
            )
        if name in seen:
            raise ApiError(
                400, "invalid_request", f"parameter '{name}' given more than once", param=name
            )
        seen.add(name)
    if provider is not None and provider not in _PROVIDERS:
        raise ApiError(400, "invalid_request", "provider must be one of 'gmail', 'microsoft'",
                       param="provider")  # fmt: skip
    try:
        filters = store.Filters(
            q=_text(q, "q", 4096),
            mailbox_id=_text(mailbox_id, "mailbox_id"),
            provider=provider,
            sender=_text(sender, "from"),
            recipient=_text(to, "to"),
            label=_text(label, "label"),
            after=_date(after, "after"),
            before=_date(before, "before"),
            thread_id=_text(thread_id, "thread_id"),
        )
    except SearchInputError as exc:
        raise from_error(exc, param=exc.param) from exc
    return principal.workspace_id, filters, limit, _text(cursor, "cursor", 2048)


Listing = Annotated[tuple[str, store.Filters, int, str | None], Depends(_listing)]


def _out(view: store.MessageView) -> dict[str, Any]:
    body = asdict(view)
    body["from"] = body.pop("sender")
    return MessageOut.model_validate(body).model_dump(by_alias=True)


@router.get("", response_model=MessageList, responses=_LIST_ERRORS, summary="Search messages",
            response_model_by_alias=True)  # fmt: skip
def search_messages(listing: Listing, session: SessionDep) -> dict[str, Any]:
    """The workspace's messages in the live index matching every filter given, newest first
    (then by id), `limit` at a time; `next_cursor` continues the same listing."""
    workspace_id, filters, limit, cursor = listing
    try:
        page = store.search(session, workspace_id, filters, limit=limit, cursor=cursor)
    except SearchInputError as exc:
        raise from_error(exc, param=exc.param) from exc
    return {"data": [_out(m) for m in page.messages], "next_cursor": page.next_cursor}


@router.get("/{message_id}", response_model=MessageEnvelope, responses=_GET_ERRORS,
            summary="Get a message", response_model_by_alias=True)  # fmt: skip
def get_message(message_id: str, principal: EmailReader, session: SessionDep) -> dict[str, Any]:
    view = (
        store.get(session, principal.workspace_id, message_id)
        if ids.looks_like_id(message_id)
        else None
    )
    if view is None:
        raise ApiError(404, "not_found", f"no message with id '{message_id[:64]}'")
    return {"data": _out(view)}
