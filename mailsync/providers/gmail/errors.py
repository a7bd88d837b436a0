"""Gmail failures as provider errors: HTTP statuses, token refusals and broken connections."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import google.auth.exceptions
import httplib2
from googleapiclient.errors import BatchError, HttpError

from mailsync.errors import ReauthRequiredError
from mailsync.providers.base import (
    AuthError,
    CursorExpiredError,
    ProviderError,
    TransientProviderError,
)

# Refresh refusals that mean the user's grant is gone (revoked, expired, password changed).
_GRANT_GONE = frozenset({"invalid_grant"})

# Reasons Google gives on a 403 that mean "slow down", not "forbidden".
_QUOTA_REASONS = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "dailyLimitExceeded"}
)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_reasons(exc: HttpError) -> set[str]:
    try:
        body = json.loads(exc.content)
        return {str(e.get("reason")) for e in body["error"].get("errors", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        return set()


def translate_http_error(exc: HttpError, what: str) -> ProviderError:
    """Map a Gmail HTTP error onto the provider exception hierarchy."""
    status = int(exc.resp.status)
    reasons = _error_reasons(exc)
    label = f"gmail {what}: HTTP {status}" + (f" ({', '.join(sorted(reasons))})" if reasons else "")
    retry_after = _retry_after(exc.resp.get("retry-after"))
    if status == 401:
        # google-auth refreshed the token and retried before this: the grant is refused.
        return ReauthRequiredError(label)
    if status == 429 or status >= 500 or (status == 403 and reasons & _QUOTA_REASONS):
        return TransientProviderError(label, retry_after=retry_after)
    if status == 403:
        return AuthError(label)  # insufficient scope, delegation denied: the grant is wrong
    return ProviderError(label)


def _refresh_error_code(exc: google.auth.exceptions.RefreshError) -> str:
    # Only the OAuth error code: descriptions are Google's, but keep the surface minimal.
    if len(exc.args) > 1 and isinstance(exc.args[1], dict):
        return str(exc.args[1].get("error", "unknown"))
    return str(exc.args[0]).split(":", 1)[0] if exc.args else "unknown"


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn anything the client stack raises into a ProviderError, chained with `from`."""
    try:
        yield
    except ProviderError:
        raise
    except HttpError as exc:
        raise translate_http_error(exc, what) from exc
    except google.auth.exceptions.RefreshError as exc:
        code = _refresh_error_code(exc)
        if getattr(exc, "retryable", False):
            raise TransientProviderError(f"gmail token refresh failed: {code}") from exc
        if code in _GRANT_GONE:
            raise ReauthRequiredError(f"gmail token refresh refused: {code}") from exc
        raise AuthError(f"gmail token refresh refused: {code}") from exc
    except google.auth.exceptions.TransportError as exc:
        raise TransientProviderError(f"gmail token endpoint unreachable during {what}") from exc
    except ssl.SSLCertVerificationError as exc:
        # A trust problem is configuration, not weather: retrying cannot fix it.
        raise ProviderError(f"gmail {what}: TLS certificate verification failed") from exc
    except (TimeoutError, ConnectionError, httplib2.HttpLib2Error, OSError) as exc:
        raise TransientProviderError(f"gmail {what}: {type(exc).__name__}") from exc
    except BatchError as exc:
        raise TransientProviderError(f"gmail {what}: malformed batch response") from exc


def answered(error: BaseException) -> bool:
    """Whether a transient error is Gmail's answer (429, 5xx, quota 403), which is worth
    retrying in-process, rather than a failure below HTTP, which is left to the caller."""
    return isinstance(error.__cause__, HttpError)


def expired_history(exc: HttpError) -> None:
    if int(exc.resp.status) == 404:
        raise CursorExpiredError("gmail history id expired") from exc


def stale_page_token(exc: HttpError) -> None:
    if int(exc.resp.status) == 400:
        raise CursorExpiredError("gmail checkpoint page token refused; start over") from exc
