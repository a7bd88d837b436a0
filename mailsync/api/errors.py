"""The one error envelope, `{"error": {"code", "message", "request_id"}}`, for every failure."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailsync.errors import MailsyncError, http_status

_HTTP_CODES = {
    400: "invalid_request",
    401: "invalid_key",
    403: "insufficient_permissions",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    431: "request_header_fields_too_large",
    500: "internal_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.param, self.headers, self.extra = param, headers or {}, extra or {}


def from_error(exc: MailsyncError, *, param: str | None = None) -> ApiError:
    """Our error as the API answers it: its status from mailsync.errors.HTTP_STATUS, its
    public message, Retry-After when it says how long to wait, its details in the body."""
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return ApiError(
        http_status(exc),
        exc.code,
        exc.public_message,
        param=param,
        headers=headers,
        extra=exc.details(),
    )


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def error_response(request: Request, error: ApiError) -> JSONResponse:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.param:
        body["param"] = error.param
    body.update(error.extra)
    body["request_id"] = request_id(request)
    return JSONResponse({"error": body}, status_code=error.status, headers=error.headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(MailsyncError)
    async def _mailsync_error(request: Request, exc: MailsyncError) -> JSONResponse:
        return error_response(request, from_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field(tuple(first.get("loc", ())))
        return error_response(
            request, ApiError(400, "invalid_request", f"{field}: {first['msg']}", param=field)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route for {request.method} {request.url.path}"
        return error_response(
            request, ApiError(exc.status_code, code, message, headers=dict(exc.headers or {}))
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(
            request, ApiError(500, "internal_error", "an unexpected error occurred; it was logged")
        )
