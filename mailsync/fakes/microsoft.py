"""Stands in for Microsoft identity and Graph mail so tests and demos run the real msal and httpx.

Identity (AAD v2):
    GET  /{tenant}/v2.0/.well-known/openid-configuration     op "openid-configuration"
    POST /{tenant}/oauth2/v2.0/token                          op "token"
         grant_type=client_credentials (scope <graph>/.default) or refresh_token (delegated)
Graph (/v1.0, also with /me and OData key segments such as users('x')/mailFolders('inbox')):
    GET  /v1.0/users/{upn}/mailFolders/{folder}/messages/delta   op "delta" (one per page)
    GET  /v1.0/users/{upn}/mailFolders                           op "mailFolders" (top level)
    GET  /v1.0/users/{upn}/mailFolders/{folder}/childFolders     op "childFolders"
    GET  /v1.0/users/{upn}/mailFolders/{folder}                  op "mailFolder"
    Folder lists come $top (default 10) at a time, linked by @odata.nextLink ($skip); a folder
    is named by a well-known name (inbox, sentitems, ..., msgfolderroot) or its id.
    At most 4 requests per mailbox are served at once: the 5th concurrent one is answered 429
    ApplicationThrottled "over its MailboxConcurrency limit" with Retry-After, as Outlook does.
Every mailbox has the five well-known folders plus user-made ones, some nested: Inbox/Newsletters,
Projects/{Falcon/Design, Roadmap}, Receipts.
Admin (besides FakeControl's /_admin/stats, /_admin/stats/reset, /_admin/faults):
    POST   /_admin/mailboxes                   {"address", "messages"?, "tenant_id"?, "spread"?}
           spread=true seeds messages over every folder (else inbox and sent items only);
           100,000 messages take well under a second
    GET    /_admin/mailboxes/{address}/messages[?folder=][&with_folders=true]
           {"ids": [...]} (+ "folders": {id: folder id} with with_folders)
    POST   /_admin/mailboxes/{address}/messages               {"count", "folder"} -> {"ids"}
    PATCH  /_admin/mailboxes/{address}/messages/{id}          {"subject"?, "is_read"?, "folder"?}
    DELETE /_admin/mailboxes/{address}/messages/{id}
    GET    /_admin/mailboxes/{address}/folders                -> {"folders": [{key, id, ...}]}
    POST   /_admin/mailboxes/{address}/folders                {"name", "parent"?} -> folder
    POST   /_admin/mailboxes/{address}/expire-delta           every delta/skip token so far -> 410
    GET    /_admin/mailboxes/{address}/concurrency            {"limit", "in_flight", "peak",
                                                               "rejected"}
    GET    /_admin/mailboxes/{address}/requests               recent Graph requests (path, query,
                                                               Prefer) of that mailbox
    POST   /_admin/mailboxes/{address}/limits/reset           forget peak, rejections, requests
    POST|GET|DELETE /_admin/mailboxes/{address}/faults        share-based faults (429 / 500 / 503
                                                               with Retry-After, slow_ms) of
                                                               mailsync.fakes.faults, per mailbox
    POST   /_admin/tokens/expire                              every access token so far -> 401
Admin folder names are keys ("inbox", "projects/falcon"), well-known names or folder ids; admin
message ids are immutable ids, the ones Graph returns under `Prefer: IdType="ImmutableId"`.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from mailsync.fakes.control import FakeControl
from mailsync.fakes.faults import MailboxFaults, mailbox_admin_router
from mailsync.fakes.microsoft_limits import (
    CONCURRENCY_RETRY_AFTER,
    MAILBOX_CONCURRENCY,
    MailboxLimits,
)
from mailsync.fakes.microsoft_state import (
    CONSENTED_SCOPES,
    GRAPH_APP_ID,
    GRAPH_RESOURCE,
    MAIL_READ_SCOPES,
    MESSAGE_PROPERTIES,
    RESERVED_SCOPES,
    WELL_KNOWN_FOLDERS,
    FakeMicrosoftState,
    Folder,
    GraphFault,
    IdentityFault,
    Mailbox,
    RoundState,
    b64url,
    unsigned_jwt,
)

DEFAULT_PAGE_SIZE = 10  # Graph's page size for message delta without odata.maxpagesize
DEFAULT_FOLDER_PAGE_SIZE = 10  # and for folder lists without $top
MAX_FOLDER_PAGE_SIZE = 1000
FOLDER_PROPERTIES = frozenset(
    {
        "id",
        "displayName",
        "parentFolderId",
        "childFolderCount",
        "unreadItemCount",
        "totalItemCount",
        "isHidden",
    }
)

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
_AAD_ERRORS = {
    # An injected 400 reads as revoked credentials, the usual reason AAD answers 400.
    400: (
        "invalid_grant",
        50173,
        "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
    ),
    401: ("invalid_client", 7000215, "Invalid client secret provided."),
    429: ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again."),
}
_AAD_TRANSIENT = (
    "temporarily_unavailable",
    90033,
    "A transient error has occurred. Please try again.",
)


class MailboxSpec(BaseModel):
    address: str = Field(pattern=r"^[^@\s/]+@[^@\s/]+$")
    messages: int | None = Field(default=None, ge=0, le=100_000)
    tenant_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]+$")
    spread: bool = False


class NewFolder(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    parent: str | None = None


class AddMessages(BaseModel):
    count: int = Field(default=1, ge=1, le=10_000)
    folder: str = "inbox"


class MessagePatch(BaseModel):
    subject: str | None = None
    is_read: bool | None = None
    folder: str | None = None


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _now_utc() -> datetime:
    return datetime.now(UTC)


# --- Graph error responses ----------------------------------------------------------------


def _graph_error(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    request_id = str(uuid.uuid4())
    client_request_id = request.headers.get("client-request-id") or request_id
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": _now_utc().strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }
    all_headers = {"request-id": request_id, "client-request-id": client_request_id}
    if status == 401:
        all_headers["WWW-Authenticate"] = (
            'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
            f'oauth2/authorize", client_id="{GRAPH_APP_ID}"'
        )
    all_headers.update(headers or {})
    return JSONResponse(body, status_code=status, headers=all_headers)


def _graph_fault_response(
    request: Request, status: int, retry_after: int | None, location: str | None = None
) -> JSONResponse:
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if status == 410 and location:
        headers["Location"] = location
    code = _GRAPH_CODES.get(status, "UnknownError")
    message = _GRAPH_MESSAGES.get(status, "An injected fault.")
    return _graph_error(request, status, code, message, headers)


# --- AAD error responses ------------------------------------------------------------------


def _aad_error(
    request: Request,
    status: int,
    error: str,
    aadsts: int,
    description: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    trace_id = str(uuid.uuid4())
    correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
    timestamp = _now_utc().strftime("%Y-%m-%d %H:%M:%S") + "Z"
    body = {
        "error": error,
        "error_description": (
            f"AADSTS{aadsts}: {description}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [aadsts],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"{_base_url(request)}/error?code={aadsts}",
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _aad_fault_response(request: Request, status: int, retry_after: int | None) -> JSONResponse:
    error, aadsts, description = _AAD_ERRORS.get(status, _AAD_TRANSIENT)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return _aad_error(request, status, error, aadsts, description, headers)


# --- request helpers ----------------------------------------------------------------------


def _preferences(request: Request) -> tuple[int | None, bool]:
    """(odata.maxpagesize, IdType="ImmutableId") from any number of Prefer headers."""
    page_size: int | None = None
    immutable = False
    for header in request.headers.getlist("prefer"):
        for pref in header.split(","):
            name, _, value = pref.strip().partition("=")
            if name.strip().lower() == "odata.maxpagesize":
                # Graph ignores preferences it cannot apply.
                with contextlib.suppress(ValueError):
                    page_size = max(1, int(value.strip().strip('"')))
            elif name.strip().lower() == "idtype" and value.strip().strip('"') == "ImmutableId":
                immutable = True
    return page_size, immutable


def _query(request: Request) -> dict[str, str]:
    # OData system query options are case-insensitive ($skipToken, $skiptoken, ...).
    return {key.lower(): value for key, value in request.query_params.items()}


def _odata_key(value: str) -> str:
    return quote(value.replace("'", "''"), safe="@'+=-_.")


def _select(payload: dict[str, Any]) -> tuple[str, ...] | None:
    select = payload.get("s")
    return tuple(select) if select else None


def _parse_select(query: dict[str, str]) -> tuple[str, ...] | None:
    param = query.get("$select")
    if not param:
        return None
    select = tuple(p.strip() for p in param.split(",") if p.strip())
    unknown = [p for p in select if p not in MESSAGE_PROPERTIES]
    if unknown:
        raise GraphFault(
            400,
            "RequestBroker--ParseUri",
            f"Could not find a property named '{unknown[0]}' on type 'microsoft.graph.message'.",
        )
    return select


def create_app(
    seed_messages: int = 50,
    seed: int = 0,
    *,
    token_lifetime: int = 3599,
    mailbox_concurrency: int = MAILBOX_CONCURRENCY,
) -> FastAPI:
    """A fresh fake with its own state; `app.state.microsoft`, `app.state.control`,
    `app.state.faults` and `app.state.limits` expose it."""
    app = FastAPI(title="mailsync fake Microsoft identity platform + Graph")
    control = FakeControl()
    state = FakeMicrosoftState(
        seed=seed, seed_messages=seed_messages, token_lifetime=token_lifetime
    )
    faults = MailboxFaults()
    limits = MailboxLimits(mailbox_concurrency)
    app.state.control = control
    app.state.microsoft = state
    app.state.faults = faults
    app.state.limits = limits
    app.include_router(control.router())
    app.include_router(
        mailbox_admin_router(faults, exists=lambda address: state.mailbox(address) is not None)
    )

    # --- identity ---------------------------------------------------------------------

    @app.get("/{tenant}/v2.0/.well-known/openid-configuration")
    def openid_configuration(tenant: str, request: Request) -> Response:
        fault = control.record("openid-configuration")
        if fault:
            return _aad_fault_response(request, fault.status, fault.retry_after)
        found = state.resolve_tenant(tenant)
        if found is None:
            return _aad_error(
                request,
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
            )
        base = _base_url(request)
        root = f"{base}/{found.tenant_id}"
        return JSONResponse(
            {
                "token_endpoint": f"{root}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{root}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{root}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{base}/oidc/userinfo",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub",
                    "iss",
                    "aud",
                    "exp",
                    "iat",
                    "nonce",
                    "preferred_username",
                    "name",
                    "tid",
                    "ver",
                    "email",
                ],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
            }
        )

    @app.post("/{tenant}/oauth2/v2.0/token")
    async def token(tenant: str, request: Request) -> Response:
        fault = control.record("token")
        if fault:
            return _aad_fault_response(request, fault.status, fault.retry_after)
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        try:
            return _token(request, tenant, form)
        except IdentityFault as exc:
            return _aad_error(request, exc.status, exc.error, exc.aadsts, exc.description)

    def _token(request: Request, tenant_segment: str, form: dict[str, str]) -> Response:
        tenant = state.resolve_tenant(tenant_segment)
        if tenant is None:
            raise IdentityFault(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant_segment}' not found. Check to make sure you have the correct "
                "tenant ID and are signing into the correct cloud.",
            )
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                pair = base64.b64decode(basic[6:].strip()).decode()
                client_id, _, client_secret = pair.partition(":")
            except ValueError:
                pass
        if not client_id:
            raise IdentityFault(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            )
        if client_id != tenant.client_id:
            raise IdentityFault(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant.tenant_id}'. This can happen if the application has not been installed "
                "by the administrator of the tenant or consented to by any user in the tenant. "
                "You may have sent your authentication request to the wrong tenant.",
            )
        if not client_secret:
            raise IdentityFault(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        if not hmac.compare_digest(client_secret.encode(), tenant.client_secret.encode()):
            raise IdentityFault(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID, for a secret added to app "
                f"'{client_id}'.",
            )
        grant_type = form.get("grant_type", "")
        scopes = form.get("scope", "").split()
        lifetime = state.token_lifetime
        if grant_type == "client_credentials":
            if len(scopes) != 1 or not scopes[0].endswith("/.default"):
                raise IdentityFault(
                    400,
                    "invalid_scope",
                    1002012,
                    f"The provided value for scope {' '.join(scopes)} is not valid. Client "
                    "credential flows must have a scope value with /.default suffixed to the "
                    "resource identifier (application ID URI).",
                )
            resource = scopes[0][: -len("/.default")]
            if resource not in (GRAPH_RESOURCE, GRAPH_APP_ID):
                raise IdentityFault(
                    400,
                    "invalid_resource",
                    500011,
                    f"The resource principal named {resource} was not found in the tenant named "
                    f"{tenant.tenant_id}.",
                )
            access_token = state.issue_access_token(
                tenant,
                None,
                frozenset({"Mail.Read"}),
                issuer=f"https://sts.windows.net/{tenant.tenant_id}/",
            )
            return JSONResponse(
                {
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": access_token,
                }
            )
        if grant_type == "refresh_token":
            info = state.lookup_refresh_token(form.get("refresh_token", ""))
            if info is None:
                raise IdentityFault(
                    400,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                )
            if info.client_id != client_id or info.tenant_id != tenant.tenant_id:
                raise IdentityFault(
                    400, "invalid_grant", 70000, "Provided grant is invalid or malformed."
                )
            graph_scopes: set[str] = set()
            reserved: set[str] = set()
            for scope in scopes:
                if scope in RESERVED_SCOPES:
                    reserved.add(scope)
                elif scope.startswith(GRAPH_RESOURCE + "/"):
                    graph_scopes.add(scope[len(GRAPH_RESOURCE) + 1 :])
                elif "/" not in scope:
                    graph_scopes.add(scope)  # AAD defaults bare scopes to Microsoft Graph
                else:
                    raise IdentityFault(
                        400,
                        "invalid_resource",
                        500011,
                        f"The resource principal named {scope.rsplit('/', 1)[0]} was not found "
                        f"in the tenant named {tenant.tenant_id}.",
                    )
            unconsented = graph_scopes - CONSENTED_SCOPES
            if unconsented:
                raise IdentityFault(
                    400,
                    "invalid_grant",
                    65001,
                    f"The user or administrator has not consented to use the application with ID "
                    f"'{client_id}' named 'mailsync'. Send an interactive authorization request "
                    "for this user and resource.",
                )
            if not graph_scopes:
                graph_scopes = {"User.Read"}
            access_token = state.issue_access_token(
                tenant,
                info.address,
                frozenset(graph_scopes),
                issuer=f"https://sts.windows.net/{tenant.tenant_id}/",
            )
            body: dict[str, Any] = {
                "token_type": "Bearer",
                "scope": " ".join(
                    sorted(f"{GRAPH_RESOURCE}/{s}" for s in graph_scopes)
                    + sorted(reserved - {"offline_access"})
                ),
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": access_token,
                "refresh_token": state.rotate_refresh_token(info),
            }
            mailbox = state.mailbox(info.address)
            assert mailbox is not None
            if "openid" in reserved:
                now = int(time.time())
                body["id_token"] = unsigned_jwt(
                    {
                        "aud": client_id,
                        "iss": f"{_base_url(request)}/{tenant.tenant_id}/v2.0",
                        "iat": now,
                        "nbf": now,
                        "exp": now + 3600,
                        "name": mailbox.display_name,
                        "oid": mailbox.object_id,
                        "preferred_username": mailbox.address,
                        "sub": b64url(mailbox.object_id.encode())[:43],
                        "tid": tenant.tenant_id,
                        "ver": "2.0",
                    }
                )
            if form.get("client_info") == "1":
                # msal keys its account (and so acquire_token_silent) on uid.utid from here.
                body["client_info"] = b64url(
                    f'{{"uid":"{mailbox.object_id}","utid":"{tenant.tenant_id}"}}'.encode()
                )
            return JSONResponse(body)
        raise IdentityFault(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )

    # --- Graph ------------------------------------------------------------------------

    def _authorize(request: Request, user: str | None) -> Mailbox:
        """The mailbox `user` names (None: /me), if the bearer token may read it."""
        header = request.headers.get("authorization", "")
        scheme, _, token_value = header.partition(" ")
        if scheme.lower() != "bearer" or not token_value.strip():
            raise GraphFault(401, "InvalidAuthenticationToken", "Access token is empty.")
        info = state.lookup_access_token(token_value.strip())
        if info is None:
            raise GraphFault(401, "InvalidAuthenticationToken", "Access token validation failure.")
        if info.expires_at <= time.time():
            raise GraphFault(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
            )
        if user is None:
            if info.address is None:
                raise GraphFault(
                    400,
                    "BadRequest",
                    "/me request is only valid with delegated authentication flow.",
                )
            user = info.address
        mailbox = state.mailbox(user)
        if mailbox is None or mailbox.tenant_id != info.tenant_id:
            raise GraphFault(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        if info.address is not None and (
            mailbox.address != info.address or not info.scopes & MAIL_READ_SCOPES
        ):
            raise GraphFault(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        return mailbox

    def _graph(
        request: Request,
        operation: str,
        user: str | None,
        answer: Callable[[Mailbox], Response],
        location: str | None = None,
    ) -> Response:
        """One Graph call: counted, then authorized, then held to the mailbox's concurrency
        limit and subject to its injected faults, then answered under the state lock."""
        fault = control.record(operation)
        if fault:
            return _graph_fault_response(request, fault.status, fault.retry_after, location)
        try:
            mailbox = _authorize(request, user)
        except GraphFault as exc:
            return _graph_error(request, exc.status, exc.code, exc.message, exc.headers)
        if not limits.enter(mailbox.address):
            return _graph_error(
                request,
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
                {"Retry-After": str(CONCURRENCY_RETRY_AFTER)},
            )
        try:
            limits.record(mailbox.address, operation, request)
            draw = faults.draw(mailbox.address)
            draw.pause.wait()
            if draw.fault is not None:
                return _graph_fault_response(
                    request, draw.fault.status, draw.fault.retry_after, location
                )
            with state.lock:
                return answer(mailbox)
        except GraphFault as exc:
            return _graph_error(request, exc.status, exc.code, exc.message, exc.headers)
        finally:
            limits.leave(mailbox.address)

    def _user_part(user: str | None, mailbox: Mailbox | None = None) -> str:
        if user is None:
            return "me"
        return f"users('{_odata_key(mailbox.address if mailbox else user)}')"

    def _delta(request: Request, user: str | None, folder_segment: str) -> Response:
        restart = f"{_base_url(request)}/v1.0/{_user_part(user)}"
        restart += f"/mailFolders('{_odata_key(folder_segment)}')/messages/delta"
        return _graph(
            request,
            "delta",
            user,
            lambda mailbox: _delta_page(request, mailbox, folder_segment, restart),
            restart,
        )

    def _delta_page(
        request: Request, mailbox: Mailbox, folder_segment: str, link_base: str
    ) -> Response:
        folder = mailbox.resolve_folder(folder_segment)
        if folder is None:
            raise GraphFault(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        query = _query(request)
        page_size, immutable = _preferences(request)

        def gone() -> GraphFault:
            return GraphFault(
                410,
                "syncStateNotFound",
                "The sync state is no longer valid; restart the sync.",
                {"Location": link_base},
            )

        if "$deltatoken" in query:
            payload = state.decode_state(query["$deltatoken"])
            if (
                payload is None
                or payload.get("k") != "d"
                or payload.get("m") != mailbox.address
                or payload.get("f") != folder.key
                or payload.get("e") != mailbox.delta_epoch
            ):
                raise gone()
            # A new round: everything logged after the previous round's watermark.
            rs = RoundState(
                mailbox.address, folder.key, int(payload["w"]), mailbox.seq, 0, _select(payload)
            )
        elif "$skiptoken" in query:
            payload = state.decode_state(query["$skiptoken"])
            if (
                payload is None
                or payload.get("k") != "s"
                or payload.get("m") != mailbox.address
                or payload.get("f") != folder.key
                or payload.get("e") != mailbox.delta_epoch
            ):
                raise gone()
            lo = payload.get("lo")
            rs = RoundState(
                mailbox.address,
                folder.key,
                None if lo is None else int(lo),
                int(payload["hi"]),
                int(payload["o"]),
                _select(payload),
            )
        else:
            rs = RoundState(mailbox.address, folder.key, None, mailbox.seq, 0, _parse_select(query))

        size = page_size or DEFAULT_PAGE_SIZE
        items = mailbox.round_items(folder.key, rs.lo, rs.hi)
        value: list[dict[str, Any]] = []
        for message_id, kind in items[rs.offset : rs.offset + size]:
            if kind == "remove":
                value.append(
                    {
                        "@odata.type": "#microsoft.graph.message",
                        "id": mailbox.wire_id(message_id, folder.key, immutable),
                        "@removed": {"reason": "deleted"},
                    }
                )
                continue
            message = mailbox.messages.get(message_id)
            # Gone or moved since the round began: a later round reports it as removed.
            if message is not None and message.folder_key == folder.key:
                value.append(mailbox.render(message, rs.select, immutable))
        body: dict[str, Any] = {
            "@odata.context": f"{_base_url(request)}/v1.0/$metadata#Collection(message)"
        }
        end = rs.offset + size
        select = list(rs.select) if rs.select else None
        if end < len(items):
            token = state.encode_state(
                {
                    "k": "s",
                    "m": mailbox.address,
                    "f": folder.key,
                    "lo": rs.lo,
                    "hi": rs.hi,
                    "o": end,
                    "s": select,
                    "e": mailbox.delta_epoch,
                }
            )
            body["@odata.nextLink"] = f"{link_base}?$skiptoken={token}"
        else:
            token = state.encode_state(
                {
                    "k": "d",
                    "m": mailbox.address,
                    "f": folder.key,
                    "w": rs.hi,
                    "s": select,
                    "e": mailbox.delta_epoch,
                }
            )
            body["@odata.deltaLink"] = f"{link_base}?$deltatoken={token}"
        body["value"] = value
        applied = []
        if page_size is not None:
            applied.append(f"odata.maxpagesize={page_size}")
        if immutable:
            applied.append('IdType="ImmutableId"')
        headers = {"Preference-Applied": ", ".join(applied)} if applied else None
        return JSONResponse(body, headers=headers)

    def _folder_select(query: dict[str, str]) -> tuple[str, ...] | None:
        param = query.get("$select")
        if not param:
            return None
        select = tuple(p.strip() for p in param.split(",") if p.strip())
        unknown = [p for p in select if p not in FOLDER_PROPERTIES]
        if unknown:
            raise GraphFault(
                400,
                "RequestBroker--ParseUri",
                f"Could not find a property named '{unknown[0]}' on type "
                "'microsoft.graph.mailFolder'.",
            )
        return select

    def _folder_body(mailbox: Mailbox, folder: Folder, select: tuple[str, ...] | None) -> dict:
        body = mailbox.folder_json(folder)
        if select is not None:
            body = {k: v for k, v in body.items() if k == "id" or k in select}
        return body

    def _resolve_container(mailbox: Mailbox, segment: str) -> Folder:
        folder = mailbox.resolve_container(segment)
        if folder is None:
            raise GraphFault(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        return folder

    def _folder_collection(
        request: Request, mailbox: Mailbox, user: str | None, parent: Folder, path: str
    ) -> Response:
        """A page of `parent`'s child folders: $top (default 10) at a time, linked by $skip."""
        query = _query(request)
        select = _folder_select(query)
        try:
            top = int(query.get("$top", DEFAULT_FOLDER_PAGE_SIZE))
            skip = int(query.get("$skip", 0))
        except ValueError as exc:
            raise GraphFault(400, "BadRequest", "Invalid $top or $skip value.") from exc
        if top < 1 or skip < 0:
            raise GraphFault(400, "BadRequest", "Invalid $top or $skip value.")
        top = min(top, MAX_FOLDER_PAGE_SIZE)
        children = mailbox.children(parent.key)
        user_part = _user_part(user, mailbox)
        body: dict[str, Any] = {
            "@odata.context": f"{_base_url(request)}/v1.0/$metadata#{user_part}/mailFolders",
            "value": [_folder_body(mailbox, f, select) for f in children[skip : skip + top]],
        }
        if skip + top < len(children):
            params = {k: v for k, v in request.query_params.items() if k.lower() != "$skip"}
            params["$skip"] = str(skip + top)
            body["@odata.nextLink"] = (
                f"{_base_url(request)}/v1.0/{user_part}/{path}?{urlencode(params, safe='$,')}"
            )
        return JSONResponse(body)

    def _list_top_level(request: Request, user: str | None) -> Response:
        return _graph(
            request,
            "mailFolders",
            user,
            lambda m: _folder_collection(request, m, user, m.root, "mailFolders"),
        )

    def _list_children(request: Request, user: str | None, segment: str) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            parent = _resolve_container(mailbox, segment)
            path = f"mailFolders('{_odata_key(parent.folder_id)}')/childFolders"
            return _folder_collection(request, mailbox, user, parent, path)

        return _graph(request, "childFolders", user, answer)

    def _get_folder(request: Request, user: str | None, segment: str) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            folder = _resolve_container(mailbox, segment)
            body = _folder_body(mailbox, folder, _folder_select(_query(request)))
            context = f"{_base_url(request)}/v1.0/$metadata#{_user_part(user, mailbox)}"
            return JSONResponse({"@odata.context": f"{context}/mailFolders/$entity", **body})

        return _graph(request, "mailFolder", user, answer)

    def _unquote_key(value: str) -> str:
        return value.replace("''", "'")

    @app.get("/v1.0/users/{user}/mailFolders/{folder}/messages/delta")
    def delta_users(user: str, folder: str, request: Request) -> Response:
        return _delta(request, user, folder)

    @app.get("/v1.0/users('{user}')/mailFolders('{folder}')/messages/delta")
    def delta_users_key(user: str, folder: str, request: Request) -> Response:
        return _delta(request, _unquote_key(user), _unquote_key(folder))

    @app.get("/v1.0/me/mailFolders/{folder}/messages/delta")
    def delta_me(folder: str, request: Request) -> Response:
        return _delta(request, None, folder)

    @app.get("/v1.0/me/mailFolders('{folder}')/messages/delta")
    def delta_me_key(folder: str, request: Request) -> Response:
        return _delta(request, None, _unquote_key(folder))

    @app.get("/v1.0/users/{user}/mailFolders")
    def folders_users(user: str, request: Request) -> Response:
        return _list_top_level(request, user)

    @app.get("/v1.0/users('{user}')/mailFolders")
    def folders_users_key(user: str, request: Request) -> Response:
        return _list_top_level(request, _unquote_key(user))

    @app.get("/v1.0/me/mailFolders")
    def folders_me(request: Request) -> Response:
        return _list_top_level(request, None)

    @app.get("/v1.0/users/{user}/mailFolders/{folder}/childFolders")
    def children_users(user: str, folder: str, request: Request) -> Response:
        return _list_children(request, user, folder)

    @app.get("/v1.0/users('{user}')/mailFolders('{folder}')/childFolders")
    def children_users_key(user: str, folder: str, request: Request) -> Response:
        return _list_children(request, _unquote_key(user), _unquote_key(folder))

    @app.get("/v1.0/me/mailFolders/{folder}/childFolders")
    def children_me(folder: str, request: Request) -> Response:
        return _list_children(request, None, folder)

    @app.get("/v1.0/me/mailFolders('{folder}')/childFolders")
    def children_me_key(folder: str, request: Request) -> Response:
        return _list_children(request, None, _unquote_key(folder))

    @app.get("/v1.0/users/{user}/mailFolders/{folder}")
    def folder_users(user: str, folder: str, request: Request) -> Response:
        return _get_folder(request, user, folder)

    @app.get("/v1.0/users('{user}')/mailFolders('{folder}')")
    def folder_users_key(user: str, folder: str, request: Request) -> Response:
        return _get_folder(request, _unquote_key(user), _unquote_key(folder))

    @app.get("/v1.0/me/mailFolders/{folder}")
    def folder_me(folder: str, request: Request) -> Response:
        return _get_folder(request, None, folder)

    @app.get("/v1.0/me/mailFolders('{folder}')")
    def folder_me_key(folder: str, request: Request) -> Response:
        return _get_folder(request, None, _unquote_key(folder))

    @app.api_route("/v1.0/{rest:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    def graph_unknown(rest: str, request: Request) -> Response:
        segment = rest.rstrip("/").rsplit("/", 1)[-1]
        return _graph_error(
            request, 400, "BadRequest", f"Resource not found for the segment '{segment}'."
        )

    # --- admin ------------------------------------------------------------------------

    def _admin_mailbox(address: str) -> Mailbox:
        mailbox = state.mailbox(address)
        if mailbox is None:
            raise GraphFault(404, "MailboxNotFound", f"no mailbox {address}")
        return mailbox

    def _admin_folder(mailbox: Mailbox, name: str) -> str:
        folder = mailbox.resolve_folder(name, by_key=True)
        if folder is None:
            raise GraphFault(
                400,
                "UnknownFolder",
                f"folder must be a folder key, id or one of {sorted(WELL_KNOWN_FOLDERS)}",
            )
        return folder.key

    def _admin_error(exc: GraphFault) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.post("/_admin/mailboxes")
    def admin_create_mailbox(spec: MailboxSpec) -> Response:
        try:
            body, created = state.create_mailbox(
                spec.address, spec.messages, spec.tenant_id, spec.spread
            )
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
        return JSONResponse(body, status_code=201 if created else 200)

    @app.get("/_admin/mailboxes/{address}/messages")
    def admin_list_messages(
        address: str, folder: str | None = None, with_folders: bool = False
    ) -> Response:
        try:
            with state.lock:
                mailbox = _admin_mailbox(address)
                key = _admin_folder(mailbox, folder) if folder else None
                body: dict[str, Any] = {"ids": mailbox.ids(key)}
                if with_folders:
                    placement = mailbox.placement()
                    body["folders"] = {i: placement[i] for i in body["ids"]}
                return JSONResponse(body)
        except GraphFault as exc:
            return _admin_error(exc)

    @app.get("/_admin/mailboxes/{address}/folders")
    def admin_list_folders(address: str) -> Response:
        try:
            with state.lock:
                mailbox = _admin_mailbox(address)
                folders = [
                    {
                        "key": f.key,
                        "id": f.folder_id,
                        "display_name": f.display_name,
                        "parent_key": f.parent_key,
                        "well_known": f.well_known,
                        "total": mailbox.totals[f.key],
                    }
                    for f in mailbox.folders.values()
                ]
                return JSONResponse({"folders": folders})
        except GraphFault as exc:
            return _admin_error(exc)

    @app.post("/_admin/mailboxes/{address}/folders")
    def admin_create_folder(address: str, spec: NewFolder) -> Response:
        try:
            with state.lock:
                mailbox = _admin_mailbox(address)
                parent = _admin_folder(mailbox, spec.parent) if spec.parent else None
                try:
                    folder = mailbox.create_folder(spec.name, parent)
                except ValueError as exc:
                    raise GraphFault(409, "ErrorFolderExists", str(exc)) from exc
                return JSONResponse(
                    {
                        "key": folder.key,
                        "id": folder.folder_id,
                        "display_name": folder.display_name,
                        "parent_key": folder.parent_key,
                    },
                    status_code=201,
                )
        except GraphFault as exc:
            return _admin_error(exc)

    @app.get("/_admin/mailboxes/{address}/concurrency")
    def admin_concurrency(address: str) -> Response:
        try:
            mailbox = _admin_mailbox(address)
        except GraphFault as exc:
            return _admin_error(exc)
        return JSONResponse(limits.stats(mailbox.address))

    @app.get("/_admin/mailboxes/{address}/requests")
    def admin_requests(address: str) -> Response:
        try:
            mailbox = _admin_mailbox(address)
        except GraphFault as exc:
            return _admin_error(exc)
        return JSONResponse({"requests": limits.requests(mailbox.address)})

    @app.post("/_admin/mailboxes/{address}/limits/reset")
    def admin_reset_limits(address: str) -> Response:
        try:
            mailbox = _admin_mailbox(address)
        except GraphFault as exc:
            return _admin_error(exc)
        limits.reset(mailbox.address)
        return JSONResponse({"ok": True})

    @app.post("/_admin/mailboxes/{address}/messages")
    def admin_add_messages(address: str, spec: AddMessages) -> Response:
        try:
            with state.lock:
                mailbox = _admin_mailbox(address)
                ids = mailbox.add(spec.count, _admin_folder(mailbox, spec.folder))
                return JSONResponse({"ids": ids}, status_code=201)
        except GraphFault as exc:
            return _admin_error(exc)

    @app.patch("/_admin/mailboxes/{address}/messages/{message_id}")
    def admin_patch_message(address: str, message_id: str, patch: MessagePatch) -> Response:
        try:
            with state.lock:
                mailbox = _admin_mailbox(address)
                if message_id not in mailbox.messages:
                    raise GraphFault(404, "ErrorItemNotFound", f"no message {message_id}")
                folder_key = _admin_folder(mailbox, patch.folder) if patch.folder else None
                message = mailbox.update(
                    message_id, subject=patch.subject, is_read=patch.is_read, folder_key=folder_key
                )
                return JSONResponse(
                    {
                        "id": message.immutable_id,
                        "folder": message.folder_key,
                        "subject": message.data["subject"],
                        "is_read": message.data["isRead"],
                    }
                )
        except GraphFault as exc:
            return _admin_error(exc)

    @app.delete("/_admin/mailboxes/{address}/messages/{message_id}")
    def admin_delete_message(address: str, message_id: str) -> Response:
        try:
            with state.lock:
                mailbox = _admin_mailbox(address)
                if message_id not in mailbox.messages:
                    raise GraphFault(404, "ErrorItemNotFound", f"no message {message_id}")
                mailbox.delete(message_id)
                return Response(status_code=204)
        except GraphFault as exc:
            return _admin_error(exc)

    @app.post("/_admin/mailboxes/{address}/expire-delta")
    def admin_expire_delta(address: str) -> Response:
        try:
            with state.lock:
                mailbox = _admin_mailbox(address)
                mailbox.delta_epoch += 1
                return JSONResponse(
                    {"address": mailbox.address, "delta_epoch": mailbox.delta_epoch}
                )
        except GraphFault as exc:
            return _admin_error(exc)

    @app.post("/_admin/tokens/expire")
    def admin_expire_tokens() -> dict[str, int]:
        return {"expired": state.expire_access_tokens()}

    return app
