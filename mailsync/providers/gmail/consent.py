"""Google's consent flow through google-auth-oauthlib's Flow: the authorization URL with PKCE
S256, the code exchange, the granted-scope check, and the address from users.getProfile."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import requests
from google_auth_oauthlib.flow import Flow
from oauthlib.oauth2.rfc6749.errors import OAuth2Error

from mailsync.errors import OAuthFlowError, ProviderError
from mailsync.providers.base import ProviderEndpoints
from mailsync.providers.consent import ConsentClient, ConsentGrant, ConsentStart
from mailsync.providers.gmail.credentials import SCOPES

log = logging.getLogger(__name__)
# What a provider's error redirect may carry through to ours (RFC 6749 4.1.2.1); others
# become access_denied, so nothing the provider made up reaches the application verbatim.
_PASSED_ERRORS = frozenset(
    {"access_denied", "invalid_scope", "server_error", "temporarily_unavailable"}
)


def _flow(
    client: ConsentClient, endpoints: ProviderEndpoints, redirect_uri: str, verifier: str | None
) -> Flow:
    config = {
        "web": {
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "auth_uri": endpoints.google_auth_uri,
            "token_uri": endpoints.google_token_uri,
        }
    }
    return Flow.from_client_config(
        config, scopes=SCOPES, redirect_uri=redirect_uri, code_verifier=verifier,
        autogenerate_code_verifier=True,
    )  # fmt: skip


def start(
    client: ConsentClient,
    endpoints: ProviderEndpoints,
    redirect_uri: str,
    state: str,
    login_hint: str | None,
) -> ConsentStart:
    flow = _flow(client, endpoints, redirect_uri, None)
    extra = {"login_hint": login_hint} if login_hint else {}
    # prompt=consent: Google sends a refresh token only when the user is asked.
    url, _ = flow.authorization_url(
        state=state, access_type="offline", prompt="consent", include_granted_scopes="false",
        **extra,
    )  # fmt: skip
    return ConsentStart(url, {"code_verifier": flow.code_verifier})


def provider_error(response: Mapping[str, str], who: str) -> OAuthFlowError:
    error = response.get("error", "")
    passed = error if error in _PASSED_ERRORS else "access_denied"
    return OAuthFlowError(passed, f"{who} answered the consent with error '{error[:64]}'")


def finish(
    client: ConsentClient,
    endpoints: ProviderEndpoints,
    flow_data: dict[str, Any],
    redirect_uri: str,
    response: Mapping[str, str],
) -> ConsentGrant:
    if response.get("error"):
        raise provider_error(response, "Google")
    code = response.get("code")
    if not code:
        raise OAuthFlowError("invalid_request", "the callback carries no authorization code")
    flow = _flow(client, endpoints, redirect_uri, flow_data["code_verifier"])
    try:
        token = flow.fetch_token(code=code, verify=endpoints.ca_bundle or True, timeout=30)
    except Warning as changed:  # oauthlib: the granted scopes differ from those asked for
        token = getattr(changed, "token", {}) or {}
    except OAuth2Error as exc:
        raise OAuthFlowError(
            "access_denied", f"Google refused the authorization code ({exc.error})"
        ) from None
    except requests.RequestException as exc:
        raise OAuthFlowError(
            "temporarily_unavailable", f"Google's token endpoint failed ({type(exc).__name__})"
        ) from None
    granted = set(token.get("scope") or [])
    if isinstance(token.get("scope"), str):
        granted = set(str(token["scope"]).split())
    refresh_token = token.get("refresh_token")
    credentials = {
        "type": "oauth",
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "refresh_token": refresh_token or "",
    }
    if not set(SCOPES) <= granted:
        _forget(credentials, endpoints)
        raise OAuthFlowError(
            "invalid_scope",
            "the permission to read Gmail was not granted (it was unticked on Google's "
            "consent screen); connect again and leave it ticked",
        )
    if not refresh_token:
        raise OAuthFlowError("server_error", "Google returned no refresh token")
    return ConsentGrant(_address(credentials, endpoints), credentials)


def _address(credentials: dict[str, Any], endpoints: ProviderEndpoints) -> str:
    from mailsync.providers.gmail.provider import GmailProvider

    try:
        with GmailProvider("me", credentials, endpoints) as gmail:
            return gmail.account_address()
    except ProviderError as exc:
        raise OAuthFlowError(
            "server_error", f"the Gmail address could not be read ({exc.code})"
        ) from None


def _forget(credentials: dict[str, Any], endpoints: ProviderEndpoints) -> None:
    """Revoke a grant mailsync refuses, so it does not linger in the user's account."""
    if not credentials["refresh_token"]:
        return
    from mailsync.providers.gmail.revocation import revoke

    try:
        revoke(credentials, endpoints)
    except ProviderError as exc:
        log.info("gmail: a refused grant could not be revoked (%s)", exc.code)
