"""The AAD v2 consent side msal drives: /authorize (code + PKCE), /devicecode and its
verification page, and redeeming either at the token endpoint (identity.py)."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from mailsync.fakes.consent import Grant, consent_page, error_page, pkce_ok
from mailsync.fakes.microsoft.errors import IdentityFault, aad_error, base_url
from mailsync.fakes.microsoft.state import FakeMicrosoftState, Tenant

DEVICE_PAGE = "/common/oauth2/deviceauth"


def _authorize(
    fake: FakeMicrosoftState, segment: str, params: dict[str, str], action: str
) -> Response:
    tenant = fake.resolve_tenant(segment)
    if tenant is None:
        return error_page(400, "invalid_tenant", f"AADSTS90002: Tenant '{segment}' not found.")
    if params.get("client_id") != tenant.client_id:
        return error_page(
            400, "unauthorized_client",
            f"AADSTS700016: Application with identifier '{params.get('client_id', '')}' was not "
            f"found in the directory '{tenant.tenant_id}'.",
        )  # fmt: skip
    redirect_uri = params.get("redirect_uri", "")
    if not redirect_uri.startswith(("https://", "http://localhost", "http://127.0.0.1")):
        return error_page(400, "invalid_request", "AADSTS50011: The redirect URI is not valid.")
    state = params.get("state")
    if params.get("response_type") != "code":
        return fake.consent.decide_error(redirect_uri, state, "unsupported_response_type")
    hint = params.get("login_hint", "").lower()
    mailbox = fake.mailbox(hint) if hint else None
    if mailbox is None or mailbox.tenant_id != tenant.tenant_id:
        first = next((a for a, m in fake.mailboxes.items() if m.tenant_id == tenant.tenant_id), "")
        fields = {k: v for k, v in params.items() if k != "login_hint"}
        return consent_page(action, fields, params.get("scope", "").split(), first)
    grant = Grant(
        tenant.client_id, mailbox.address, params.get("scope", "").split(), redirect_uri,
        params.get("code_challenge"), params.get("code_challenge_method"), params.get("nonce"),
    )  # fmt: skip
    return fake.consent.decide(grant, redirect_uri, state)


def redeem(
    fake: FakeMicrosoftState, tenant: Tenant, client_id: str, grant_type: str, form: dict[str, str]
) -> tuple[str, list[str], str | None]:
    """(address, granted scopes, nonce) of an authorization or device code; IdentityFault
    (AAD's error) for an unknown, used or expired code, a wrong redirect or PKCE verifier,
    or a device code the user has not approved yet (authorization_pending)."""
    if grant_type == "authorization_code":
        grant = fake.consent.redeem(form.get("code", ""))
        if grant is None or grant.client_id != client_id:
            raise IdentityFault(400, "invalid_grant", 70008, "The provided authorization code "
                                "or refresh token has expired due to inactivity.")  # fmt: skip
        if grant.redirect_uri != form.get("redirect_uri"):
            raise IdentityFault(400, "invalid_grant", 500112, "The reply address does not match.")
        if not pkce_ok(grant, form.get("code_verifier")):
            raise IdentityFault(
                400, "invalid_grant", 501481,
                "The Code_Verifier does not match the code_challenge supplied in the "
                "authorization request.",
            )  # fmt: skip
        return grant.address, grant.scopes, grant.nonce
    with fake.consent.lock:
        entry = fake.consent.devices.get(form.get("device_code", ""))
        if entry is None or entry.client_id != client_id or entry.expires_at <= time.monotonic():
            raise IdentityFault(400, "expired_token", 70020, "The provided device code expired.")
        if entry.grant is None:
            raise IdentityFault(400, "authorization_pending", 70016, "OAuth 2.0 device flow "
                                "error. Authorization is pending. Continue polling.")  # fmt: skip
        del fake.consent.devices[form.get("device_code", "")]
    return entry.grant.address, entry.grant.scopes, None


def consent_router(fake: FakeMicrosoftState) -> APIRouter:
    router = APIRouter()

    @router.get("/{tenant}/oauth2/v2.0/authorize")
    def authorize(tenant: str, request: Request) -> Response:
        fake.control.record("authorize")
        return _authorize(fake, tenant, dict(request.query_params), request.url.path)

    @router.post("/{tenant}/oauth2/v2.0/authorize")
    async def approve(tenant: str, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        return _authorize(fake, tenant, form, request.url.path)

    @router.post("/{tenant}/oauth2/v2.0/devicecode")
    async def devicecode(tenant: str, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        found = fake.resolve_tenant(tenant)
        if found is None or form.get("client_id") != found.client_id:
            fault = IdentityFault(400, "unauthorized_client", 700016, "Unknown application.")
            return aad_error(request, fault)
        device_code, entry = fake.consent.new_device_code(
            found.client_id, form.get("scope", "").split()
        )
        uri = base_url(request) + DEVICE_PAGE
        return JSONResponse({
            "device_code": device_code, "user_code": entry.user_code, "verification_uri": uri,
            "expires_in": 900, "interval": 1,
            "message": f"To sign in, use a web browser to open the page {uri} and enter the "
            f"code {entry.user_code} to authenticate.",
        })  # fmt: skip

    @router.get(DEVICE_PAGE)
    def device_page() -> Response:
        return HTMLResponse(
            f'<!doctype html><form method="post" action="{DEVICE_PAGE}">'
            '<label>Code <input name="user_code"></label>'
            '<label>Account <input name="login_hint"></label>'
            '<button type="submit">Next</button></form>'
        )

    @router.post(DEVICE_PAGE)
    async def device_approve(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        if not fake.exists(form.get("login_hint", "")) or not fake.consent.approve_device(
            form.get("user_code", ""), form.get("login_hint", "")
        ):
            return error_page(400, "invalid_request", "Unknown code or account.")
        return HTMLResponse("<!doctype html><p>You have signed in. You may close this window.</p>")

    return router
