"""Google JSON API answers and error bodies, so every refusal the fake gives reads like Gmail's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from fastapi import Response

from mailsync.fakes.faults import retry_after_header

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class Fault(Protocol):
    """What FakeControl.record (and a mailbox's fault plan) hands back when a call is to fail."""

    status: int
    retry_after: int | None


@dataclass
class ApiResponse:
    """A status, headers and JSON body: what one Gmail call answers, inside a batch or not."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def json_response(resp: ApiResponse) -> Response:
    """`resp` as the HTTP answer of a standalone call."""
    return Response(
        content=b"" if resp.body is None else json.dumps(resp.body).encode(),
        status_code=resp.status,
        headers=resp.headers,
        media_type="application/json; charset=UTF-8",
    )


def google_error(
    status: int,
    message: str,
    reason: str,
    domain: str = "global",
    headers: dict[str, str] | None = None,
) -> ApiResponse:
    """An error in the shape every Google JSON API answers with."""
    body = {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
            "status": _STATUS.get(status, "UNKNOWN"),
        }
    }
    return ApiResponse(status, body, dict(headers or {}))


def not_found() -> ApiResponse:
    return google_error(404, "Requested entity was not found.", "notFound")


def unauthenticated() -> ApiResponse:
    resp = google_error(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential.",
        "authError",
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
    )
    assert resp.body is not None
    resp.body["error"]["errors"][0].update(
        message="Invalid Credentials", location="Authorization", locationType="header"
    )
    return resp


def fault_response(fault: Fault) -> ApiResponse:
    """An injected fault as Gmail would answer that status."""
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    status = fault.status
    if status == 429:
        return google_error(
            429,
            "Too many concurrent requests for user.",
            "rateLimitExceeded",
            "usageLimits",
            headers,
        )
    if status == 403:
        return google_error(
            403, "User-rate limit exceeded.", "userRateLimitExceeded", "usageLimits", headers
        )
    if status == 401:
        resp = unauthenticated()
        resp.headers.update(headers)
        return resp
    if status == 404:
        return not_found()
    if status >= 500:
        return google_error(status, "Backend Error", "backendError", headers=headers)
    return google_error(status, "Injected failure.", "failedPrecondition", headers=headers)


def quota_response(status: int, wait_s: float) -> ApiResponse:
    """What Gmail answers when a user's per-minute quota is spent (403 or 429 flavour)."""
    headers = {"Retry-After": retry_after_header(wait_s)}
    if status == 403:
        message = (
            "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota."
        )
        return google_error(403, message, "userRateLimitExceeded", "usageLimits", headers)
    when = datetime.now(UTC) + timedelta(seconds=wait_s)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    message = f"User-rate limit exceeded.  Retry after {stamp}"
    return google_error(429, message, "rateLimitExceeded", "usageLimits", headers)
