"""Revoking a Gmail OAuth grant at Google's revocation endpoint (RFC 7009) on a disconnect."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from mailsync.providers.base import ProviderEndpoints, ProviderError, TransientProviderError


def revoke(credentials: dict[str, Any], endpoints: ProviderEndpoints, timeout: float = 10) -> bool:
    """Revoke the refresh token (and with it every access token of the grant): True when
    Google did or already had (400 invalid_token), False for a service account, whose access
    is the Workspace admin's delegation and has no grant to revoke."""
    if credentials.get("type") != "oauth":
        return False
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=endpoints.ca_bundle) if endpoints.ca_bundle else True
    )
    try:
        response = httpx.post(
            endpoints.resolved_google_revoke_uri,
            data={"token": credentials["refresh_token"]},
            verify=verify,
            trust_env=False,
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise TransientProviderError(f"gmail revocation: {type(exc).__name__}") from exc
    if response.status_code == 200:
        return True
    if response.status_code == 400 and _error(response) == "invalid_token":
        return True  # revoked already (by the user, or a rotation)
    raise ProviderError(f"gmail revocation refused: HTTP {response.status_code}")


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        return ""
