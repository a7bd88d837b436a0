"""ASGI middleware: request ids and rate-limit figures on every response, input limits."""

from __future__ import annotations

import asyncio
import json
import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from ulid import ULID

from mailsync.api.errors import ApiError
from mailsync.api.ratelimit import (
    HEADER_NAMES,
    get_rate_limit,
    key_was_checked,
    meter_address,
    meter_arrival,
    meter_push,
    uncounted,
)

log = logging.getLogger(__name__)

_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_RATE_HEADERS = {name.lower().encode() for name in HEADER_NAMES}


def uncounted_headers(scope: Scope, headers: dict[str, str]) -> dict[str, str]:
    """`headers` plus the not-counted X-RateLimit-* figures (ratelimit.uncounted)."""
    info = uncounted(scope)
    return {**(info.headers() if info else {}), **headers}


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> None:
    """The standard error envelope, for middleware answering before (or instead of) the app."""
    rid = scope.get("state", {}).get("request_id", "")
    body = json.dumps({"error": {"code": code, "message": message, "request_id": rid}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Echo a sane client X-Request-ID, otherwise generate one; expose it as request.state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), ""
        )
        rid = supplied if _SANE_ID.match(supplied) else f"req_{ULID()}"
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


PUSH_PATH = "/v1/push/"


class RateLimitMiddleware:
    """X-RateLimit-* on every response, from the figures in the scope state (ratelimit.py).

    A request without an Authorization header is counted against its client address before
    the app is called, so /health, /docs, /openapi.json and 404s are enforced too, and an
    over-quota one is answered 429 here. With a header, the key dependencies decide (a valid
    key's quota, or the address's when the key fails); on an endpoint that never looked at
    the key the request is unauthenticated after all and the address is counted when the
    response starts, a 429 then replacing that response. Figures a route set are never
    replaced. Sits inside RequestIdMiddleware, so its 429s carry X-Request-ID.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if str(scope.get("path", "")).startswith(PUSH_PATH):
            # The providers' push requests prove themselves by their own secret (clientState,
            # an OIDC token) and come by the thousand from a few addresses: their own quota,
            # not an address's general one (ratelimit.meter_push).
            # Its figures are then the response's, and no address quota is counted below.
            try:
                meter_push(scope)
            except ApiError as exc:
                await self._refuse(scope, send, exc)
                return
        has_key = any(k.lower() == b"authorization" for k, _ in scope["headers"])
        if not has_key and get_rate_limit(scope) is None:
            try:
                meter_address(scope)
            except ApiError as exc:
                await self._refuse(scope, send, exc)
                return
        replaced = False

        async def send_with_limits(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the app's own response was replaced by a 429
            if message["type"] == "http.response.start":
                if get_rate_limit(scope) is None and not key_was_checked(scope):
                    try:
                        meter_address(scope)
                    except ApiError as exc:
                        replaced = True
                        await self._refuse(scope, send, exc)
                        return
                info = get_rate_limit(scope)
                if info is not None:
                    headers = [
                        (k, v) for k, v in message.get("headers", []) if k not in _RATE_HEADERS
                    ]
                    headers += [(k.lower().encode(), v.encode()) for k, v in info.headers().items()]
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_limits)

    async def _refuse(self, scope: Scope, send: Send, error: ApiError) -> None:
        info = get_rate_limit(scope)
        headers = {**(info.headers() if info else {}), **error.headers}
        await send_error(scope, send, error.status, error.code, error.message, headers)


class ArrivalMeterMiddleware:
    """Count every request against its client address when it arrives, before it may hold an
    overload slot (ratelimit.meter_arrival): an address over its arrival quota is answered
    429 here, whatever Authorization it sends, and holds nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            meter_arrival(scope)
        except ApiError as exc:
            info = get_rate_limit(scope)
            headers = {**(info.headers() if info else {}), **exc.headers}
            await send_error(scope, send, exc.status, exc.code, exc.message, headers)
            return
        await self.app(scope, receive, send)


class HeaderLimitMiddleware:
    """Refuse a request whose header section is too big with 431, before any work is done.

    Too big: more than `max_count` header fields, or more than `max_bytes` of them, counted
    as on the wire (`name: value` plus CRLF per field; the request line is not counted). The
    answer is 431 `request_header_fields_too_large` in the error envelope, with
    `Connection: close` (the body, if any, is not read).

    This sees only heads the server parsed. uvicorn (h11, as api_server.py runs it)
    buffers an incomplete head up to its `h11_max_incomplete_event_size` (4x `max_bytes`, at
    least 32 KiB) and past that answers itself: a plain-text 400 "Invalid HTTP request
    received." and a closed connection; the app never sees that request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_count: int) -> None:
        self.app, self.max_bytes, self.max_count = app, max_bytes, max_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        problem = None
        if len(headers) > self.max_count:
            problem = f"{len(headers)} header fields, more than the {self.max_count} allowed"
        else:
            size = sum(len(name) + len(value) + 4 for name, value in headers)
            if size > self.max_bytes:
                problem = f"{size} bytes of header fields, more than the {self.max_bytes} allowed"
        if problem is None:
            await self.app(scope, receive, send)
            return
        await send_error(
            scope,
            send,
            431,
            "request_header_fields_too_large",
            f"the request has {problem}",
            uncounted_headers(scope, {"Connection": "close"}),
        )


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Read the whole request body before the app runs, within a size and a time limit.

    - 413 `payload_too_large` for a body over `limit` bytes: at once when Content-Length
      says so (nothing is read), otherwise (chunked) as soon as the bytes read pass it; at
      most `limit` bytes are ever held.
    - 408 `request_timeout` when the body has not fully arrived `timeout` seconds after the
      request reached the app. The deadline is for the whole body, so a client trickling a
      byte at a time cannot stretch it.

    Both answers carry `Connection: close`. The app then gets the body in one message. A
    client that disconnects before its body is complete gets no answer (and the app is not
    called).
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float | None = None) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def _refuse(self, scope: Scope, send: Send, status: int = 413) -> None:
        if status == 408:
            code, message = (
                "request_timeout",
                f"the request body did not arrive within {self.timeout:g} s",
            )
        else:
            code, message = "payload_too_large", f"request body exceeds {self.limit} bytes"
        await send_error(scope, send, status, code, message, {"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(scope, send)
            return
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(receive)
        except TimeoutError:
            await self._refuse(scope, send, 408)
            return
        except _BodyTooLarge:
            await self._refuse(scope, send)
            return
        if body is None:
            return  # the client went away mid-body: nobody to answer
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class UnhandledErrorMiddleware:
    """Turn an unexpected exception into the 500 envelope *inside* the other middleware, so
    it still carries X-Request-ID and the rate-limit headers (Starlette's own handler runs
    outside all of them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            if started:
                raise
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            body = json.dumps(
                {
                    "error": {
                        "code": "internal_error",
                        "message": "an unexpected error occurred; it was logged",
                        "request_id": scope.get("state", {}).get("request_id", ""),
                    }
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
