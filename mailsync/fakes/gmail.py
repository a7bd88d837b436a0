"""A fake Gmail (OAuth token endpoint, REST, batch) speaking the real wire formats, so the real
google-api-python-client and google-auth can be tested against it over HTTPS.

Besides FakeControl's operation counters and queued faults, each mailbox can have
- a fault plan (mailsync.fakes.faults): a seeded share of its API calls, batch parts included,
  fail with 429/5xx/403 in Google's error shape, and/or every call is slowed down;
- a per-user quota in units per "minute" (`quota_window_seconds` long, 60 unless shrunk for
  tests) charged at Gmail's documented per-method costs, batch parts one by one; a call over
  it is refused with 429 rateLimitExceeded or 403 userRateLimitExceeded, with Retry-After.

Admin (besides /_admin/stats, /_admin/stats/reset, /_admin/faults):
    POST   /_admin/mailboxes                             {"address", "messages"?} -> credentials
    POST   /_admin/mailboxes/{address}/revoke            new refresh token, tokens dropped
    POST   /_admin/service-accounts                      a key file for domain-wide delegation
    POST   /_admin/tokens/expire                         every access token so far -> 401
    GET    /_admin/mailboxes/{address}/messages[?labels=true]  {"ids"[, "labels": {id: [...]}]}
    POST   /_admin/mailboxes/{address}/messages          {"count"} -> {"ids"}
    GET    /_admin/mailboxes/{address}/messages/{id}     the message as the fake sees it
    PATCH  /_admin/mailboxes/{address}/messages/{id}     {"add_labels", "remove_labels"}
    DELETE /_admin/mailboxes/{address}/messages/{id}
    POST   /_admin/mailboxes/{address}/expire-history    every history id so far -> 404
    POST   /_admin/mailboxes/{address}/faults            FaultPlan (share, statuses, ...)
    GET    /_admin/mailboxes/{address}/faults            the plan and its counters
    DELETE /_admin/mailboxes/{address}/faults
    PUT    /_admin/mailboxes/{address}/quota             {"units_per_minute": int|null, "status"?}
    GET    /_admin/mailboxes/{address}/quota             limit, units in window, charged, rejected
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from mailsync.fakes.control import FakeControl
from mailsync.fakes.faults import (
    MailboxFaults,
    Pause,
    QuotaMeter,
    mailbox_admin_router,
    retry_after_header,
)
from mailsync.fakes.gmail_auth import FakeOAuth, Fault
from mailsync.fakes.gmail_batch import (
    MAX_PARTS,
    ApiResponse,
    parse_batch,
    render_batch,
)
from mailsync.fakes.gmail_state import HISTORY_TYPES, Mailbox, NotFound

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
_ROUTES = (
    (re.compile(r"^users/([^/]+)/profile$"), "profile"),
    (re.compile(r"^users/([^/]+)/messages$"), "messages.list"),
    (re.compile(r"^users/([^/]+)/messages/([^/]+)$"), "messages.get"),
    (re.compile(r"^users/([^/]+)/history$"), "history.list"),
)
_FORMATS = ("minimal", "metadata", "full", "raw")
# Gmail's per-method quota units (developers.google.com/gmail/api/reference/quota).
QUOTA_COSTS = {"profile": 1, "messages.list": 5, "messages.get": 5, "history.list": 2}


def _route(rel_path: str) -> tuple[re.Match[str], str] | None:
    for pattern, op in _ROUTES:
        match = pattern.match(rel_path)
        if match:
            return match, op
    return None


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


def _not_found() -> ApiResponse:
    return google_error(404, "Requested entity was not found.", "notFound")


def _unauthenticated() -> ApiResponse:
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


def _fault_response(fault: Fault) -> ApiResponse:
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
        resp = _unauthenticated()
        resp.headers.update(headers)
        return resp
    if status == 404:
        return _not_found()
    if status >= 500:
        return google_error(status, "Backend Error", "backendError", headers=headers)
    return google_error(status, "Injected failure.", "failedPrecondition", headers=headers)


def _quota_response(status: int, wait_s: float) -> ApiResponse:
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


class FakeGmail:
    """All state of one fake Gmail service; every public method is safe to call from any thread."""

    def __init__(
        self,
        control: FakeControl,
        seed_messages: int,
        seed: int,
        token_lifetime: int,
        quota: QuotaMeter | None = None,
    ) -> None:
        self.control = control
        self.seed_messages = seed_messages
        self.seed = seed
        self.lock = threading.RLock()
        self.mailboxes: dict[str, Mailbox] = {}
        self.oauth = FakeOAuth(control, self.lock, self.mailboxes, token_lifetime)
        self.faults = MailboxFaults()
        self.quota = quota or QuotaMeter()

    # -- admin --------------------------------------------------------------------------------

    def mailbox(self, address: str) -> Mailbox:
        with self.lock:
            box = self.mailboxes.get(address.lower())
            if box is None:
                raise HTTPException(404, f"no mailbox {address}")
            return box

    def ensure_mailbox(self, address: str, messages: int | None) -> tuple[Mailbox, bool]:
        with self.lock:
            box = self.mailboxes.get(address.lower())
            if box is not None:
                return box, False
            count = self.seed_messages if messages is None else messages
            box = Mailbox.create(address, self.seed, count)
            self.mailboxes[address.lower()] = box
            return box, True

    def rotate_credentials(self, address: str) -> Mailbox:
        with self.lock:
            box = self.mailbox(address)
            box.refresh_token = "1//0" + secrets.token_urlsafe(40)
            self.oauth.drop_tokens(box.address)
            return box

    # -- Gmail REST -----------------------------------------------------------------------------

    def dispatch(
        self, method: str, path: str, query: list[tuple[str, str]], authorization: str | None
    ) -> ApiResponse:
        """Answer one standalone Gmail REST call (`path` below /gmail/v1/)."""
        response, delay = self._dispatch(method, path, query, authorization)
        delay.wait()
        return response

    def _gate(self, box: Mailbox, op: str) -> tuple[ApiResponse | None, Pause]:
        """The mailbox's fault plan, then its quota: a refusal (or None) and a delay."""
        draw = self.faults.draw(box.address)
        if draw.fault is not None:
            return _fault_response(draw.fault), draw.pause
        wait = self.quota.charge(box.address, QUOTA_COSTS[op])
        if wait is not None:
            return _quota_response(self.quota.status(box.address), wait), draw.pause
        return None, draw.pause

    def _dispatch(
        self, method: str, path: str, query: list[tuple[str, str]], authorization: str | None
    ) -> tuple[ApiResponse, Pause]:
        """One call, standalone or from a batch: the answer and how long it should take."""
        rel = unquote(path.split("/gmail/v1/", 1)[-1]).strip("/")
        found = _route(rel)
        if found is None:
            return google_error(404, "Method not found.", "notFound"), Pause()
        match, op = found
        if method != "GET":
            return google_error(405, "Method not allowed in this fake.", "badRequest"), Pause()
        fault = self.control.record(op)
        if fault is not None:
            return _fault_response(fault), Pause()
        box = self.oauth.authenticate(authorization)
        if box is None:
            return _unauthenticated(), Pause()
        user_id = match.group(1)
        if user_id != "me" and user_id.lower() != box.address.lower():
            return google_error(403, f"Delegation denied for {box.address}", "forbidden"), Pause()
        refusal, delay = self._gate(box, op)
        if refusal is not None:
            return refusal, delay
        params: dict[str, list[str]] = {}
        for key, value in query:
            params.setdefault(key, []).append(value)
        try:
            with self.lock:
                if op == "profile":
                    return ApiResponse(200, box.profile()), delay
                if op == "messages.list":
                    return self._messages_list(box, params), delay
                if op == "messages.get":
                    return self._messages_get(box, match.group(2), params), delay
                return self._history_list(box, params), delay
        except NotFound:
            return _not_found(), delay
        except ValueError as exc:
            return google_error(400, str(exc), "invalidArgument"), delay

    @staticmethod
    def _int(params: dict[str, list[str]], name: str, default: int, limit: int) -> int:
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

    def _messages_list(self, box: Mailbox, params: dict[str, list[str]]) -> ApiResponse:
        body = box.list_messages(
            max_results=self._int(params, "maxResults", 100, 500),
            page_token=params.get("pageToken", [None])[0],
            label_ids=params.get("labelIds", []),
            include_spam_trash=params.get("includeSpamTrash", ["false"])[0].lower() == "true",
        )
        return ApiResponse(200, body)

    def _messages_get(
        self, box: Mailbox, message_id: str, params: dict[str, list[str]]
    ) -> ApiResponse:
        fmt = params.get("format", ["full"])[0].lower()
        if fmt not in _FORMATS:
            raise ValueError(f"Invalid value at 'format' ({fmt})")
        msg = box.messages.get(message_id)
        if msg is None:
            raise NotFound(message_id)
        return ApiResponse(200, msg.resource(fmt, params.get("metadataHeaders")))

    def _history_list(self, box: Mailbox, params: dict[str, list[str]]) -> ApiResponse:
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
            max_results=self._int(params, "maxResults", 100, 500),
            page_token=params.get("pageToken", [None])[0],
        )
        return ApiResponse(200, body)

    def batch(
        self, body: bytes, content_type: str, authorization: str | None
    ) -> ApiResponse | tuple[bytes, str]:
        """A Google batch: each part is dispatched, counted, fault-checked and charged against
        the quota on its own; a slowed mailbox delays the whole answer once."""
        fault = self.control.record("batch")
        if fault is not None:
            return _fault_response(fault)
        try:
            parts = parse_batch(body, content_type)
        except (ValueError, UnicodeDecodeError) as exc:
            return google_error(400, f"Failed to parse batch request: {exc}", "badRequest")
        if len(parts) > MAX_PARTS:
            return google_error(
                400, f"Too many requests in batch; the limit is {MAX_PARTS}.", "badRequest"
            )
        answers = []
        delay = Pause()
        for part in parts:
            if not part.path.startswith("/gmail/v1/"):
                answers.append((part.content_id, google_error(404, "Not Found", "notFound")))
                continue
            auth = part.headers.get("authorization") or authorization
            answer, part_delay = self._dispatch(part.method, part.path, part.query, auth)
            answers.append((part.content_id, answer))
            delay = delay.longest(part_delay)
        delay.wait()
        return render_batch(answers)


def _json(resp: ApiResponse) -> Response:
    return Response(
        content=b"" if resp.body is None else json.dumps(resp.body).encode(),
        status_code=resp.status,
        headers=resp.headers,
        media_type="application/json; charset=UTF-8",
    )


class MailboxIn(BaseModel):
    address: str
    messages: int | None = None


class ServiceAccountIn(BaseModel):
    client_email: str | None = None


class AddMessagesIn(BaseModel):
    count: int = 1


class LabelsIn(BaseModel):
    add_labels: list[str] = []
    remove_labels: list[str] = []


def create_app(
    seed_messages: int = 50,
    seed: int = 0,
    token_lifetime: int = 3599,
    *,
    quota_units_per_minute: int | None = None,
    quota_window_seconds: float = 60.0,
    quota_status: int = 429,
) -> FastAPI:
    """A fresh fake Gmail; state lives on `app.state.gmail`, counters on `app.state.control`.

    `quota_units_per_minute` (None: no limit, usage still counted) is every mailbox's initial
    per-user quota per `quota_window_seconds`; refusals use `quota_status` (429 or 403)."""
    if quota_status not in (403, 429):
        raise ValueError("quota_status must be 403 or 429")
    app = FastAPI(title="fake gmail")
    control = FakeControl()
    quota = QuotaMeter(quota_units_per_minute, quota_window_seconds, quota_status)
    fake = FakeGmail(control, seed_messages, seed, token_lifetime, quota)
    app.state.control = control
    app.state.gmail = fake
    app.include_router(control.router())

    def exists(address: str) -> bool:
        with fake.lock:
            return address.lower() in fake.mailboxes

    app.include_router(mailbox_admin_router(fake.faults, fake.quota, exists))

    def credentials(box: Mailbox) -> dict[str, Any]:
        return {
            "address": box.address,
            "credentials": {
                "type": "oauth",
                "client_id": box.client_id,
                "client_secret": box.client_secret,
                "refresh_token": box.refresh_token,
            },
        }

    @app.post("/token")
    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        status, body, headers = fake.oauth.token(form)
        return Response(
            json.dumps(body), status_code=status, headers=headers, media_type="application/json"
        )

    @app.api_route("/gmail/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def gmail_rest(rest: str, request: Request) -> Response:
        return _json(
            fake.dispatch(
                request.method,
                request.url.path,
                list(request.query_params.multi_items()),
                request.headers.get("authorization"),
            )
        )

    async def batch(request: Request) -> Response:
        # In a worker thread: a big batch (or a slowed mailbox) must not stall the event loop.
        result = await run_in_threadpool(
            fake.batch,
            await request.body(),
            request.headers.get("content-type", ""),
            request.headers.get("authorization"),
        )
        if isinstance(result, ApiResponse):
            return _json(result)
        body, content_type = result
        return Response(body, media_type=None, headers={"Content-Type": content_type})

    # The documented batch URL, and the one the discovery document's batchPath yields.
    app.add_api_route("/batch/gmail/v1", batch, methods=["POST"])
    app.add_api_route("/batch", batch, methods=["POST"])

    @app.post("/_admin/mailboxes", status_code=201)
    def add_mailbox(spec: MailboxIn, response: Response) -> dict[str, Any]:
        box, created = fake.ensure_mailbox(spec.address, spec.messages)
        if not created:
            response.status_code = 200
        return credentials(box)

    @app.post("/_admin/mailboxes/{address}/revoke")
    def revoke(address: str) -> dict[str, Any]:
        return credentials(fake.rotate_credentials(address))

    @app.post("/_admin/service-accounts", status_code=201)
    def add_service_account(
        request: Request, spec: ServiceAccountIn | None = None
    ) -> dict[str, Any]:
        token_uri = str(request.base_url).rstrip("/") + "/token"
        return fake.oauth.create_service_account(spec.client_email if spec else None, token_uri)

    @app.post("/_admin/tokens/expire")
    def expire_tokens() -> dict[str, int]:
        return {"expired": fake.oauth.expire_tokens()}

    @app.get("/_admin/mailboxes/{address}/messages")
    def list_ids(address: str, labels: bool = False) -> dict[str, Any]:
        box = fake.mailbox(address)
        with fake.lock:
            newest = box.newest_first()
            out: dict[str, Any] = {"ids": [m.id for m in newest]}
            if labels:
                out["labels"] = {m.id: list(m.label_ids) for m in newest}
            return out

    @app.post("/_admin/mailboxes/{address}/messages", status_code=201)
    def add_messages(address: str, spec: AddMessagesIn) -> dict[str, list[str]]:
        box = fake.mailbox(address)
        with fake.lock:
            return {"ids": box.add_messages(spec.count)}

    @app.get("/_admin/mailboxes/{address}/messages/{message_id}")
    def get_message(address: str, message_id: str) -> dict[str, Any]:
        box = fake.mailbox(address)
        with fake.lock:
            try:
                return box.admin_view(message_id)
            except NotFound:
                raise HTTPException(404, "no such message") from None

    @app.patch("/_admin/mailboxes/{address}/messages/{message_id}")
    def patch_labels(address: str, message_id: str, spec: LabelsIn) -> dict[str, Any]:
        box = fake.mailbox(address)
        with fake.lock:
            try:
                msg = box.modify_labels(message_id, spec.add_labels, spec.remove_labels)
            except NotFound:
                raise HTTPException(404, "no such message") from None
            return {"id": msg.id, "labelIds": list(msg.label_ids), "historyId": str(msg.history_id)}

    @app.delete("/_admin/mailboxes/{address}/messages/{message_id}", status_code=204)
    def delete_message(address: str, message_id: str) -> Response:
        box = fake.mailbox(address)
        with fake.lock:
            try:
                box.delete_message(message_id)
            except NotFound:
                raise HTTPException(404, "no such message") from None
        return Response(status_code=204)

    @app.post("/_admin/mailboxes/{address}/expire-history")
    def expire_history(address: str) -> dict[str, str]:
        box = fake.mailbox(address)
        with fake.lock:
            return {"historyId": str(box.expire_history())}

    return app
