"""Microsoft's consent flows through msal: the auth code flow (initiate_auth_code_flow /
acquire_token_by_auth_code_flow, PKCE S256 and nonce by msal) and, for the CLI, the device flow.
The address is the id token's preferred_username, the tenant its tid."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import msal
import requests
from msal.exceptions import MsalServiceError

from mailsync.errors import OAuthFlowError
from mailsync.providers.base import ProviderEndpoints
from mailsync.providers.consent import ConsentClient, ConsentGrant, ConsentStart
from mailsync.providers.gmail.consent import provider_error
from mailsync.providers.microsoft.connections import identity_pool
from mailsync.providers.microsoft.credentials import DELEGATED_SCOPES
from mailsync.providers.microsoft.identity import IdentitySession

MAIL_READ = "Mail.Read"


@contextmanager
def _app(
    client: ConsentClient, endpoints: ProviderEndpoints, public: bool = False
) -> Iterator[msal.ClientApplication]:
    pool = identity_pool(endpoints.ca_bundle)
    session = IdentitySession(endpoints.ca_bundle or True, 30.0, pool.value)
    authority = f"{endpoints.microsoft_authority_host.rstrip('/')}/{client.tenant}"
    try:
        try:
            app: msal.ClientApplication
            if public:
                app = msal.PublicClientApplication(
                    client.client_id, authority=authority, http_client=session,
                    instance_discovery=False,
                )  # fmt: skip
            else:
                app = msal.ConfidentialClientApplication(
                    client.client_id, client_credential=client.client_secret,
                    authority=authority, http_client=session, instance_discovery=False,
                )  # fmt: skip
        except (ValueError, MsalServiceError, requests.RequestException) as exc:
            raise OAuthFlowError(
                "temporarily_unavailable",
                f"the Microsoft identity platform could not be asked ({type(exc).__name__})",
            ) from None
        yield app
    finally:
        session.close()
        pool.release()


def start(
    client: ConsentClient,
    endpoints: ProviderEndpoints,
    redirect_uri: str,
    state: str,
    login_hint: str | None,
) -> ConsentStart:
    with _app(client, endpoints) as app:
        flow = app.initiate_auth_code_flow(
            DELEGATED_SCOPES, redirect_uri=redirect_uri, state=state, login_hint=login_hint,
            prompt="select_account" if not login_hint else None,
        )  # fmt: skip
    return ConsentStart(str(flow["auth_uri"]), dict(flow))


def finish(
    client: ConsentClient,
    endpoints: ProviderEndpoints,
    flow: dict[str, Any],
    redirect_uri: str,
    response: Mapping[str, str],
) -> ConsentGrant:
    if response.get("error"):
        raise provider_error(response, "Microsoft")
    if not response.get("code"):
        raise OAuthFlowError("invalid_request", "the callback carries no authorization code")
    with _app(client, endpoints) as app:
        try:
            result = app.acquire_token_by_auth_code_flow(flow, dict(response))
        except ValueError:  # msal: the response does not belong to the flow (its state)
            raise OAuthFlowError(
                "invalid_request", "the callback does not match the flow"
            ) from None
        except (MsalServiceError, requests.RequestException) as exc:
            raise OAuthFlowError(
                "temporarily_unavailable",
                f"the Microsoft token endpoint failed ({type(exc).__name__})",
            ) from None
    return grant(client, result)


def grant(client: ConsentClient, result: dict[str, Any]) -> ConsentGrant:
    """The credentials to store from msal's token answer, once its scopes and user check out."""
    if "error" in result or not result.get("refresh_token"):
        error = str(result.get("error", "no token"))[:64]
        raise OAuthFlowError("access_denied", f"Microsoft refused the authorization ({error})")
    scopes = {s.rsplit("/", 1)[-1] for s in str(result.get("scope", "")).split()}
    if MAIL_READ not in scopes:
        raise OAuthFlowError(
            "invalid_scope", "the permission to read mail (Mail.Read) was not granted"
        )
    claims = result.get("id_token_claims") or {}
    address = str(claims.get("preferred_username") or claims.get("email") or "").lower()
    tenant = str(claims.get("tid") or "")
    if "@" not in address or not tenant:
        raise OAuthFlowError("server_error", "the id token names no mailbox address or tenant")
    credentials = {
        "type": "refresh_token",
        "tenant_id": tenant,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "refresh_token": str(result["refresh_token"]),
    }
    return ConsentGrant(address, credentials)


def device_flow(
    client: ConsentClient, endpoints: ProviderEndpoints, show: Callable[[str, str, str], None]
) -> ConsentGrant:
    """The device flow (CLI, no redirect): `show(message, verification_uri, user_code)` tells
    the user where to go; blocks until they approved, refused, or the code expired."""
    with _app(client, endpoints, public=True) as app:
        try:
            flow = app.initiate_device_flow(scopes=DELEGATED_SCOPES)
            if "user_code" not in flow:
                raise OAuthFlowError(
                    "access_denied", f"no device code ({str(flow.get('error', ''))[:64]})"
                )
            show(
                str(flow.get("message", "")), str(flow["verification_uri"]), str(flow["user_code"])
            )
            result = app.acquire_token_by_device_flow(flow)
        except (MsalServiceError, requests.RequestException) as exc:
            raise OAuthFlowError(
                "temporarily_unavailable",
                f"the Microsoft identity platform failed ({type(exc).__name__})",
            ) from None
    return grant(client, result)
