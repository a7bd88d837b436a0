"""Graph and AAD error bodies, so every refusal the fake gives reads like the real service's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import Request
from fastapi.responses import JSONResponse

from mailsync.fakes.microsoft.state import GRAPH_APP_ID

# What an injected fault of a status reads as; anything else is a generic injected fault.
_GRAPH_CODES = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "ErrorAccessDenied",
    404: "ErrorItemNotFound",
    410: "syncStateNotFound",
    429: "ApplicationThrottled",
    500: "generalException",
    502: "UnknownError",
    503: "serviceNotAvailable",
    504: "UnknownError",
}
_GRAPH_MESSAGES = {
    401: "Access token validation failure.",
    403: "Access is denied. Check credentials and try again.",
    404: "The specified object was not found in the store.",
    410: "The sync state is no longer valid; restart the sync.",
    429: "Application is over its MailboxConcurrency limit.",
}
_AAD_TRANSIENT = (
    "temporarily_unavailable",
    90033,
    "A transient error has occurred. Please try again.",
)
_AAD_ERRORS = {
    # An injected 400 reads as revoked credentials, the usual reason AAD answers 400.
    400: (
        "invalid_grant",
        50173,
        "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
    ),
    401: ("invalid_client", 7000215, "Invalid client secret provided."),
    429: _AAD_TRANSIENT,
}


class GraphFault(Exception):
    """A Graph error response: status, Graph error code, message and extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class IdentityFault(Exception):
    """An AAD token-endpoint error: status, OAuth error, AADSTS number and description."""

    def __init__(self, status: int, error: str, aadsts: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.aadsts = aadsts
        self.description = description


def not_found() -> GraphFault:
    return GraphFault(404, "ErrorItemNotFound", _GRAPH_MESSAGES[404])


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def graph_error(request: Request, fault: GraphFault) -> JSONResponse:
    request_id = str(uuid.uuid4())
    client_request_id = request.headers.get("client-request-id") or request_id
    body = {
        "error": {
            "code": fault.code,
            "message": fault.message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }
    headers = {"request-id": request_id, "client-request-id": client_request_id}
    if fault.status == 401:
        headers["WWW-Authenticate"] = (
            'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
            f'oauth2/authorize", client_id="{GRAPH_APP_ID}"'
        )
    headers.update(fault.headers)
    return JSONResponse(body, status_code=fault.status, headers=headers)


def injected_graph_fault(
    status: int, retry_after: int | None, location: str | None = None
) -> GraphFault:
    """What Graph would answer with `status`; a 410 points at `location` to restart from."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if status == 410 and location:
        headers["Location"] = location
    code = _GRAPH_CODES.get(status, "UnknownError")
    message = _GRAPH_MESSAGES.get(status, "An injected fault.")
    return GraphFault(status, code, message, headers)


def aad_error(
    request: Request, fault: IdentityFault, headers: dict[str, str] | None = None
) -> JSONResponse:
    trace_id = str(uuid.uuid4())
    correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"
    body = {
        "error": fault.error,
        "error_description": (
            f"AADSTS{fault.aadsts}: {fault.description}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [fault.aadsts],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"{base_url(request)}/error?code={fault.aadsts}",
    }
    return JSONResponse(body, status_code=fault.status, headers=headers)


def injected_aad_fault(request: Request, status: int, retry_after: int | None) -> JSONResponse:
    error, aadsts, description = _AAD_ERRORS.get(status, _AAD_TRANSIENT)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return aad_error(request, IdentityFault(status, error, aadsts, description), headers)
