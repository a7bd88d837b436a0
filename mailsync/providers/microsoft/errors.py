"""Graph and identity platform failures: what is waited out, what is raised, and as what."""

from __future__ import annotations

import re
import ssl
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

import httpx
import requests
from msal.exceptions import MsalServiceError

from mailsync.errors import ReauthRequiredError
from mailsync.providers.base import AuthError, ProviderError

# How long msal itself refuses to repeat a token request that got a 5xx without Retry-After.
_MSAL_THROTTLE_DEFAULT = 5.0
_AUTH_ERRORS = frozenset(
    {
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "invalid_scope",
        "invalid_resource",
        "invalid_tenant",
        "interaction_required",
        "consent_required",
        "login_required",
        "access_denied",
    }
)
# Of those, the ones only the user's consent again can fix (revoked, expired, consent withdrawn).
_GRANT_GONE = frozenset(
    {"invalid_grant", "interaction_required", "consent_required", "login_required"}
)
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_SYNC_STATE_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
_AADSTS_RE = re.compile(r"AADSTS\d+")


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def caused_by_tls_verification(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(6):  # httpx wraps httpcore, which wraps ssl
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _Throttled(Exception):
    """A 429 (Graph or token endpoint) that may be waited out in-process."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Retryable(Exception):
    """A failure worth a few more tries after a backoff: a Graph 5xx or 408, a timeout, a
    dropped connection, an identity platform outage."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _SyncStateGone(Exception):
    """Graph no longer knows a delta round's state (410 Gone, syncStateNotFound, ...)."""


def raise_for_graph(response: httpx.Response) -> NoReturn:
    """A Graph answer other than 200 as the error it stands for."""
    status = response.status_code
    code, message = "", ""
    try:
        error = response.json().get("error") or {}
        code, message = str(error.get("code") or ""), str(error.get("message") or "")
    except (ValueError, AttributeError):
        pass
    detail = f"Microsoft Graph {status}" + (f" {code}" if code else "")
    if message:
        detail += f": {message[:200]}"
    told = retry_after(response.headers.get("Retry-After"))
    if status == 410 or code.lower() in _SYNC_STATE_CODES:
        raise _SyncStateGone(detail)
    if status == 429:
        raise _Throttled(detail, told)
    if status == 401:
        # Graph refused a token just issued (graph.py asks for a fresh one once first).
        raise ReauthRequiredError(detail)
    if status == 403:
        raise AuthError(detail)
    if status >= 500 or status == 408:
        raise _Retryable(detail, told)
    raise ProviderError(detail)


def raise_for_discovery(exc: ValueError, status: int | None, told: float | None) -> NoReturn:
    """msal could not read the tenant's OpenID configuration (its last answer: `status`)."""
    if status == 429:
        raise _Throttled("Microsoft identity platform throttled tenant discovery", told) from exc
    if status in (400, 404):
        raise AuthError("Microsoft identity platform does not know this tenant") from exc
    if status is not None and status >= 500:
        raise _Retryable(
            f"Microsoft identity platform tenant discovery failed ({status})", told
        ) from exc
    raise ProviderError("invalid Microsoft authority configuration") from exc


def raise_identity_unreachable(exc: Exception, status: int | None, told: float | None) -> NoReturn:
    """msal or requests raised talking to the identity platform (its last answer: `status`)."""
    if isinstance(exc, requests.exceptions.SSLError):
        raise ProviderError("TLS verification failed for the Microsoft identity platform") from exc
    detail = f"Microsoft identity platform unavailable ({type(exc).__name__})"
    if isinstance(exc, MsalServiceError) and status == 429:
        raise _Throttled(detail, told) from exc
    if isinstance(exc, MsalServiceError) and status is not None and status >= 500:
        # msal answers the same request from its own memory of this failure until
        # Retry-After (or its default) has passed, so retrying sooner would be pointless.
        detail = f"Microsoft identity platform unavailable ({status})"
        wait = told if told is not None else _MSAL_THROTTLE_DEFAULT
        raise _Retryable(detail, wait) from exc
    raise _Retryable(detail) from exc


def raise_for_token_error(
    result: dict[str, Any], status: int | None, told: float | None
) -> NoReturn:
    """msal's error dict for a refused token request (its last answer: `status`)."""
    error = str(result.get("error") or "unknown_error")
    codes = _AADSTS_RE.findall(str(result.get("error_description") or ""))[:1]
    detail = f"Microsoft identity platform refused the token request: {error}"
    if codes:
        detail += f" ({codes[0]})"
    if status == 429:
        raise _Throttled(detail, told)
    if error in _GRANT_GONE:
        raise ReauthRequiredError(detail)
    if error in _AUTH_ERRORS:
        raise AuthError(detail)
    if error in _TRANSIENT_ERRORS or (status is not None and status >= 500):
        # msal answers the same request from its own memory of this failure until
        # Retry-After (or its default) has passed, so waiting less would be pointless.
        raise _Retryable(detail, told if told is not None else _MSAL_THROTTLE_DEFAULT)
    raise ProviderError(detail)
