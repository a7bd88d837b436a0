"""The one path every Graph call takes: counted, authorized, throttled, faulted, then answered."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailsync.fakes.microsoft import delta, folders
from mailsync.fakes.microsoft.errors import GraphFault, graph_error, injected_graph_fault
from mailsync.fakes.microsoft.limits import CONCURRENCY_RETRY_AFTER
from mailsync.fakes.microsoft.mailbox import Mailbox
from mailsync.fakes.microsoft.odata import GraphCall, unquote_key
from mailsync.fakes.microsoft.state import MAIL_READ_SCOPES, FakeMicrosoftState


@dataclass(frozen=True)
class Operation:
    name: str  # what FakeControl counts and faults, and the mailbox's request log shows
    path: str  # below the mailbox segment, with "{folder}" where the path names a folder
    answer: Callable[[GraphCall, Mailbox], Response]
    restart: Callable[[GraphCall], str] | None = None  # where an injected 410 sends the client


OPERATIONS = (
    Operation("delta", "mailFolders/{folder}/messages/delta", delta.page, delta.restart_link),
    Operation("mailFolders", "mailFolders", folders.top_level),
    Operation("childFolders", "mailFolders/{folder}/childFolders", folders.children),
    Operation("mailFolder", "mailFolders/{folder}", folders.one),
)
_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]


def graph_router(fake: FakeMicrosoftState) -> APIRouter:
    """Every spelling of every operation, then a Graph-shaped 400 for any other /v1.0 path."""
    router = APIRouter(prefix="/v1.0")
    for operation in OPERATIONS:
        for path, keyed in _spellings(operation.path):
            endpoint = _endpoint(fake, operation, keyed)
            router.add_api_route(path, endpoint, methods=["GET"], name=operation.name)

    @router.api_route("/{rest:path}", methods=_METHODS)
    def graph_unknown(rest: str, request: Request) -> Response:
        segment = rest.rstrip("/").rsplit("/", 1)[-1]
        message = f"Resource not found for the segment '{segment}'."
        return graph_error(request, GraphFault(400, "BadRequest", message))

    return router


def _spellings(path: str) -> list[tuple[str, bool]]:
    """The paths Graph serves `path` under: /users/{upn} or /me, segments plain or as OData keys
    (users('x')/mailFolders('inbox')); True where the values come key-quoted."""
    keyed = path.replace("/{folder}", "('{folder}')")
    spellings = [
        (f"/users/{{user}}/{path}", False),
        (f"/users('{{user}}')/{keyed}", True),
        (f"/me/{path}", False),
    ]
    if keyed != path:
        spellings.append((f"/me/{keyed}", True))
    return spellings


def _endpoint(
    fake: FakeMicrosoftState, operation: Operation, keyed: bool
) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        values = {
            name: unquote_key(request.path_params[name]) if keyed else request.path_params[name]
            for name in ("user", "folder")
            if name in request.path_params
        }
        call = GraphCall(fake, request, values.get("user"), values.get("folder"))
        return serve(call, operation)

    return endpoint


def serve(call: GraphCall, operation: Operation) -> Response:
    """One Graph call: counted, then authorized, then held to the mailbox's concurrency limit
    and subject to its injected faults, then (delta) past its folder's gate, then answered
    under the state lock."""
    fake = call.fake
    restart = operation.restart(call) if operation.restart else None
    try:
        fault = fake.control.record(operation.name)
        if fault:
            raise injected_graph_fault(fault.status, fault.retry_after, restart)
        mailbox = authorize(call)
        if not fake.limits.enter(mailbox.address):
            raise injected_graph_fault(429, CONCURRENCY_RETRY_AFTER)
        try:
            fake.limits.record(mailbox.address, operation.name, call.request)
            draw = fake.faults.draw(mailbox.address)
            draw.pause.wait()
            if draw.fault is not None:
                raise injected_graph_fault(draw.fault.status, draw.fault.retry_after, restart)
            with _gate(call, operation, mailbox), fake.lock:
                return operation.answer(call, mailbox)
        finally:
            fake.limits.leave(mailbox.address)
    except GraphFault as exc:
        return graph_error(call.request, exc)


def _gate(call: GraphCall, operation: Operation, mailbox: Mailbox) -> AbstractContextManager[None]:
    """A delta call passes its folder's gate (held there while a test says so) before the lock."""
    if operation.name != "delta":
        return nullcontext()
    with call.fake.lock:
        folder = mailbox.resolve_folder(call.folder or "")
    if folder is None:  # answered 404 by the delta page itself
        return nullcontext()
    return call.fake.gates.passage(mailbox.address, folder.key)


def authorize(call: GraphCall) -> Mailbox:
    """The mailbox `call.user` names (None: /me), if the bearer token may read it."""
    header = call.request.headers.get("authorization", "")
    scheme, _, token_value = header.partition(" ")
    if scheme.lower() != "bearer" or not token_value.strip():
        raise GraphFault(401, "InvalidAuthenticationToken", "Access token is empty.")
    info = call.fake.lookup_access_token(token_value.strip())
    if info is None:
        raise GraphFault(401, "InvalidAuthenticationToken", "Access token validation failure.")
    if info.expires_at <= time.time():
        raise GraphFault(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        )
    user = call.user
    if user is None:
        if info.address is None:
            raise GraphFault(
                400,
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
            )
        user = info.address
    mailbox = call.fake.mailbox(user)
    if mailbox is None or mailbox.tenant_id != info.tenant_id:
        raise GraphFault(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
    if info.address is not None and (
        mailbox.address != info.address or not info.scopes & MAIL_READ_SCOPES
    ):
        raise GraphFault(
            403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
        )
    return mailbox
