"""Every Gmail REST call's one path, alone or in a batch: counted, authorized, gated, answered."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from fastapi import APIRouter, Request, Response

from mailsync.fakes.faults import Pause
from mailsync.fakes.gmail.errors import (
    ApiResponse,
    fault_response,
    google_error,
    json_response,
    not_found,
    quota_response,
    unauthenticated,
)
from mailsync.fakes.gmail.mailbox import Mailbox, NotFound
from mailsync.fakes.gmail.seed import HISTORY_TYPES
from mailsync.fakes.gmail.state import FakeGmail

Params = dict[str, list[str]]
_FORMATS = ("minimal", "metadata", "full", "raw")


def _int(params: Params, name: str, default: int, limit: int) -> int:
    raw = params.get(name, [None])[0]
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"Invalid value at '{name}' ({raw})") from None
    if value < 1:
        raise ValueError(f"Invalid value at '{name}' ({raw})")
    return min(value, limit)


def _profile(box: Mailbox, match: re.Match[str], params: Params) -> ApiResponse:
    return ApiResponse(200, box.profile())


def _messages_list(box: Mailbox, match: re.Match[str], params: Params) -> ApiResponse:
    body = box.list_messages(
        max_results=_int(params, "maxResults", 100, 500),
        page_token=params.get("pageToken", [None])[0],
        label_ids=params.get("labelIds", []),
        include_spam_trash=params.get("includeSpamTrash", ["false"])[0].lower() == "true",
    )
    return ApiResponse(200, body)


def _messages_get(box: Mailbox, match: re.Match[str], params: Params) -> ApiResponse:
    fmt = params.get("format", ["full"])[0].lower()
    if fmt not in _FORMATS:
        raise ValueError(f"Invalid value at 'format' ({fmt})")
    message_id = match.group(2)
    msg = box.messages.get(message_id)
    if msg is None:
        raise NotFound(message_id)
    return ApiResponse(200, msg.resource(fmt, params.get("metadataHeaders")))


def _history_list(box: Mailbox, match: re.Match[str], params: Params) -> ApiResponse:
    start_raw = params.get("startHistoryId", [None])[0]
    if not start_raw:
        return google_error(400, "Missing required field: startHistoryId", "invalidArgument")
    try:
        start = int(start_raw)
    except ValueError:
        raise ValueError(f"Invalid value at 'start_history_id' ({start_raw})") from None
    types = params.get("historyTypes", [])
    unknown = [t for t in types if t not in HISTORY_TYPES]
    if unknown:
        raise ValueError(f"Invalid value at 'history_types' ({unknown[0]})")
    body = box.list_history(
        start=start,
        history_types=types,
        label_id=params.get("labelId", [None])[0],
        max_results=_int(params, "maxResults", 100, 500),
        page_token=params.get("pageToken", [None])[0],
    )
    return ApiResponse(200, body)


@dataclass(frozen=True)
class Operation:
    name: str  # what FakeControl counts and faults, and QUOTA_COSTS names
    pattern: re.Pattern[str]  # the path below /gmail/v1/; group 1 is the user id
    cost: int  # Gmail's quota units (developers.google.com/gmail/api/reference/quota)
    answer: Callable[[Mailbox, re.Match[str], Params], ApiResponse]  # under the state lock


OPERATIONS = (
    Operation("profile", re.compile(r"^users/([^/]+)/profile$"), 1, _profile),
    Operation("messages.list", re.compile(r"^users/([^/]+)/messages$"), 5, _messages_list),
    Operation("messages.get", re.compile(r"^users/([^/]+)/messages/([^/]+)$"), 5, _messages_get),
    Operation("history.list", re.compile(r"^users/([^/]+)/history$"), 2, _history_list),
)
QUOTA_COSTS = {operation.name: operation.cost for operation in OPERATIONS}


def _route(rel_path: str) -> tuple[Operation, re.Match[str]] | None:
    for operation in OPERATIONS:
        match = operation.pattern.match(rel_path)
        if match:
            return operation, match
    return None


def _gate(fake: FakeGmail, box: Mailbox, operation: Operation) -> tuple[ApiResponse | None, Pause]:
    """The mailbox's fault plan, then its quota: a refusal (or None) and a delay."""
    draw = fake.faults.draw(box.address)
    if draw.fault is not None:
        return fault_response(draw.fault), draw.pause
    wait = fake.quota.charge(box.address, operation.cost)
    if wait is not None:
        return quota_response(fake.quota.status(box.address), wait), draw.pause
    return None, draw.pause


def serve(
    fake: FakeGmail,
    method: str,
    path: str,
    query: list[tuple[str, str]],
    authorization: str | None,
) -> tuple[ApiResponse, Pause]:
    """One call (`path` ends below /gmail/v1/): the answer and how long it should take."""
    found = _route(unquote(path.split("/gmail/v1/", 1)[-1]).strip("/"))
    if found is None:
        return google_error(404, "Method not found.", "notFound"), Pause()
    operation, match = found
    if method != "GET":
        return google_error(405, "Method not allowed in this fake.", "badRequest"), Pause()
    fault = fake.control.record(operation.name)
    if fault is not None:
        return fault_response(fault), Pause()
    box = fake.oauth.authenticate(authorization)
    if box is None:
        return unauthenticated(), Pause()
    user_id = match.group(1)
    if user_id != "me" and user_id.lower() != box.address.lower():
        return google_error(403, f"Delegation denied for {box.address}", "forbidden"), Pause()
    refusal, delay = _gate(fake, box, operation)
    if refusal is not None:
        return refusal, delay
    params: Params = {}
    for key, value in query:
        params.setdefault(key, []).append(value)
    try:
        with fake.lock:
            return operation.answer(box, match, params), delay
    except NotFound:
        return not_found(), delay
    except ValueError as exc:
        return google_error(400, str(exc), "invalidArgument"), delay


def rest_router(fake: FakeGmail) -> APIRouter:
    """/gmail/v1/..., every method: unknown paths and methods get Google-shaped refusals."""
    router = APIRouter()

    @router.api_route("/gmail/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def gmail_rest(rest: str, request: Request) -> Response:
        answer, delay = serve(
            fake,
            request.method,
            request.url.path,
            list(request.query_params.multi_items()),
            request.headers.get("authorization"),
        )
        delay.wait()
        return json_response(answer)

    return router
