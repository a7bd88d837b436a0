"""The AAD v2 endpoints msal talks to: OpenID configuration and the token endpoint's two grants."""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mailsync.fakes.microsoft.content import b64url
from mailsync.fakes.microsoft.errors import (
    IdentityFault,
    aad_error,
    base_url,
    injected_aad_fault,
)
from mailsync.fakes.microsoft.state import (
    CONSENTED_SCOPES,
    GRAPH_APP_ID,
    GRAPH_RESOURCE,
    RESERVED_SCOPES,
    FakeMicrosoftState,
    RefreshTokenInfo,
    Tenant,
    unsigned_jwt,
)

AUTHORIZATION_CODE = "authorization_code"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"


def identity_router(fake: FakeMicrosoftState) -> APIRouter:
    router = APIRouter()

    def answer(request: Request, operation: str, respond: Callable[[], Response]) -> Response:
        """Counted, then an injected fault or the answer, refusals in AAD's error shape."""
        fault = fake.control.record(operation)
        if fault:
            return injected_aad_fault(request, fault.status, fault.retry_after)
        try:
            return respond()
        except IdentityFault as exc:
            return aad_error(request, exc)

    @router.get("/{tenant}/v2.0/.well-known/openid-configuration")
    def openid_configuration(tenant: str, request: Request) -> Response:
        return answer(request, "openid-configuration", lambda: _openid(fake, request, tenant))

    @router.post("/{tenant}/oauth2/v2.0/token")
    async def token(tenant: str, request: Request) -> Response:
        body = await request.body()
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        return answer(request, "token", lambda: _token(fake, request, tenant, form))

    return router


def tenant_of(fake: FakeMicrosoftState, segment: str, error: str = "invalid_request") -> Tenant:
    return _tenant(fake, segment, error)


def _tenant(fake: FakeMicrosoftState, segment: str, error: str) -> Tenant:
    tenant = fake.resolve_tenant(segment)
    if tenant is None:
        raise IdentityFault(
            400,
            error,
            90002,
            f"Tenant '{segment}' not found. Check to make sure you have the correct tenant ID "
            "and are signing into the correct cloud.",
        )
    return tenant


def _openid(fake: FakeMicrosoftState, request: Request, segment: str) -> Response:
    tenant = _tenant(fake, segment, "invalid_tenant")
    base = base_url(request)
    root = f"{base}/{tenant.tenant_id}"
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


def _token(
    fake: FakeMicrosoftState, request: Request, segment: str, form: dict[str, str]
) -> Response:
    tenant = _tenant(fake, segment, "invalid_request")
    grant_type = form.get("grant_type", "")
    # The device flow is a public client's (msal's PublicClientApplication sends no secret).
    client_id = _client(request, tenant, form, public=grant_type == DEVICE_CODE)
    scopes = form.get("scope", "").split()
    if grant_type == "client_credentials":
        return _client_credentials(fake, tenant, scopes)
    if grant_type == "refresh_token":
        return _refresh_token(fake, request, tenant, client_id, scopes, form)
    if grant_type in (AUTHORIZATION_CODE, DEVICE_CODE):
        from mailsync.fakes.microsoft.consent import redeem

        address, granted, nonce = redeem(fake, tenant, client_id, grant_type, form)
        return delegated_answer(fake, request, tenant, client_id, address, granted, form, nonce)
    raise IdentityFault(
        400,
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{grant_type}'.",
    )


def _client(request: Request, tenant: Tenant, form: dict[str, str], public: bool = False) -> str:
    """The client id, once the request proves it is the tenant's app (form or Basic auth)."""
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
    if public and not client_secret:
        return client_id
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
    return client_id


def _unknown_resource(resource: str, tenant: Tenant) -> IdentityFault:
    return IdentityFault(
        400,
        "invalid_resource",
        500011,
        f"The resource principal named {resource} was not found in the tenant named "
        f"{tenant.tenant_id}.",
    )


def _bearer(
    fake: FakeMicrosoftState,
    tenant: Tenant,
    address: str | None,
    scopes: frozenset[str],
    scope: str | None = None,
) -> dict[str, Any]:
    """The token response's common part; `scope` is what a delegated answer says it granted."""
    body: dict[str, Any] = {"token_type": "Bearer"}
    if scope is not None:
        body["scope"] = scope
    lifetime = fake.token_lifetime
    body.update(
        expires_in=lifetime,
        ext_expires_in=lifetime,
        access_token=fake.issue_access_token(tenant, address, scopes),
    )
    return body


def _client_credentials(fake: FakeMicrosoftState, tenant: Tenant, scopes: list[str]) -> Response:
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
        raise _unknown_resource(resource, tenant)
    return JSONResponse(_bearer(fake, tenant, None, frozenset({"Mail.Read"})))


def _refresh_token(
    fake: FakeMicrosoftState,
    request: Request,
    tenant: Tenant,
    client_id: str,
    scopes: list[str],
    form: dict[str, str],
) -> Response:
    info = fake.lookup_refresh_token(form.get("refresh_token", ""))
    if info is None and form.get("refresh_token", "") in fake.revoked_refresh_tokens:
        raise IdentityFault(
            400,
            "invalid_grant",
            50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is "
            "needed. The user might have changed or reset their password.",
        )
    if info is None:
        raise IdentityFault(
            400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
        )
    if info.client_id != client_id or info.tenant_id != tenant.tenant_id:
        raise IdentityFault(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
    return delegated_answer(fake, request, tenant, client_id, info.address, scopes, form, None)


def delegated_answer(
    fake: FakeMicrosoftState,
    request: Request,
    tenant: Tenant,
    client_id: str,
    address: str,
    scopes: list[str],
    form: dict[str, str],
    nonce: str | None,
) -> Response:
    """A delegated token answer for the user at `address`: access and (new) refresh token,
    an id_token when openid was asked (with the authorization request's nonce), client_info."""
    info = RefreshTokenInfo(tenant.tenant_id, client_id, address)
    graph_scopes, reserved = _delegated_scopes(scopes, tenant, client_id)
    granted = sorted(f"{GRAPH_RESOURCE}/{s}" for s in graph_scopes)
    scope = " ".join(granted + sorted(reserved - {"offline_access"}))
    body = _bearer(fake, tenant, info.address, frozenset(graph_scopes), scope)
    body["refresh_token"] = fake.rotate_refresh_token(info)
    mailbox = fake.mailbox(info.address)
    assert mailbox is not None
    if "openid" in reserved:
        now = int(time.time())
        body["id_token"] = unsigned_jwt(
            {
                "aud": client_id,
                "iss": f"{base_url(request)}/{tenant.tenant_id}/v2.0",
                "iat": now,
                "nbf": now,
                "exp": now + 3600,
                "name": mailbox.display_name,
                "oid": mailbox.object_id,
                "preferred_username": mailbox.address,
                "sub": b64url(mailbox.object_id.encode())[:43],
                "tid": tenant.tenant_id,
                "ver": "2.0",
                **({"nonce": nonce} if nonce else {}),
            }
        )
    if form.get("client_info") == "1":
        # msal keys its account (and so acquire_token_silent) on uid.utid from here.
        body["client_info"] = b64url(
            f'{{"uid":"{mailbox.object_id}","utid":"{tenant.tenant_id}"}}'.encode()
        )
    return JSONResponse(body)


def _delegated_scopes(
    scopes: list[str], tenant: Tenant, client_id: str
) -> tuple[set[str], set[str]]:
    """(Graph permissions, OpenID scopes) a delegated request asks for; refused when it names
    another resource or a permission the user has not consented to."""
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
            raise _unknown_resource(scope.rsplit("/", 1)[0], tenant)
    if graph_scopes - CONSENTED_SCOPES:
        raise IdentityFault(
            400,
            "invalid_grant",
            65001,
            f"The user or administrator has not consented to use the application with ID "
            f"'{client_id}' named 'mailsync'. Send an interactive authorization request "
            "for this user and resource.",
        )
    return graph_scopes or {"User.Read"}, reserved
