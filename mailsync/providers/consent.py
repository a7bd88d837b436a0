"""The consent flow's provider side, provider-neutral: start (the authorization URL and the
secret flow data to keep), finish (exchange the code, check the scopes, find the address)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailsync.providers.base import ProviderEndpoints


@dataclass(frozen=True)
class ConsentClient:
    """mailsync's own app registration at a provider (MAILSYNC_GOOGLE_* / _MICROSOFT_*)."""

    client_id: str
    client_secret: str
    tenant: str = "organizations"  # Microsoft only: the authority's tenant segment


@dataclass(frozen=True)
class ConsentStart:
    authorization_url: str
    flow: dict[str, Any]  # secret (PKCE verifier, msal's flow): stored encrypted, never shown


@dataclass(frozen=True)
class ConsentGrant:
    """What a finished consent gives: whose mailbox, and the credentials to store (secret)."""

    address: str
    credentials: dict[str, Any]


def start_consent(
    provider: str,
    client: ConsentClient,
    endpoints: ProviderEndpoints,
    redirect_uri: str,
    state: str,
    login_hint: str | None,
) -> ConsentStart:
    if provider == "gmail":
        from mailsync.providers.gmail import consent as gmail

        return gmail.start(client, endpoints, redirect_uri, state, login_hint)
    if provider == "microsoft":
        from mailsync.providers.microsoft import consent as microsoft

        return microsoft.start(client, endpoints, redirect_uri, state, login_hint)
    raise ValueError(f"unknown provider {provider!r}")


def finish_consent(
    provider: str,
    client: ConsentClient,
    endpoints: ProviderEndpoints,
    flow: dict[str, Any],
    redirect_uri: str,
    response: Mapping[str, str],
) -> ConsentGrant:
    """Exchange the callback's code (PKCE S256); OAuthFlowError (its `error` for the redirect)
    when the provider refuses, a scope was not granted, or the address cannot be read."""
    if provider == "gmail":
        from mailsync.providers.gmail import consent as gmail

        return gmail.finish(client, endpoints, flow, redirect_uri, response)
    if provider == "microsoft":
        from mailsync.providers.microsoft import consent as microsoft

        return microsoft.finish(client, endpoints, flow, redirect_uri, response)
    raise ValueError(f"unknown provider {provider!r}")
