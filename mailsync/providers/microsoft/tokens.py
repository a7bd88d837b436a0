"""Access tokens for one mailbox through msal, its token cache kept between syncs as auth state."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, NoReturn

import msal
import requests
from msal.exceptions import MsalServiceError

from mailsync.providers.microsoft.connections import identity_pool
from mailsync.providers.microsoft.credentials import APP_SCOPES, DELEGATED_SCOPES
from mailsync.providers.microsoft.errors import (
    raise_for_discovery,
    raise_for_token_error,
    raise_identity_unreachable,
)
from mailsync.providers.microsoft.identity import IdentitySession

logger = logging.getLogger(__package__)


class Tokens:
    """One mailbox's access tokens: msal's confidential client, made on first use (it fetches
    the tenant's OpenID configuration), with its own cache and its own memory of failures.

    msal is driven from several threads: one token request at a time, the rest wait for its
    answer in the cache. Failures come as _Throttled or _Retryable (to wait out), AuthError or
    ProviderError. The cache is secret: it holds access and refresh tokens."""

    def __init__(
        self,
        credentials: dict[str, str],
        authority: str,
        ca_bundle: str | None,
        timeout: float,
        auth_state: str | None,
    ) -> None:
        self._credentials = credentials
        self._authority = authority
        # The identity pool stays open while this instance holds it (until close()).
        self._pool = identity_pool(ca_bundle)
        self.session = IdentitySession(ca_bundle or True, timeout, self._pool.value)
        self._lock = threading.RLock()
        self._cache = msal.SerializableTokenCache()
        if auth_state:
            self._load(auth_state)
        self._app: msal.ConfidentialClientApplication | None = None
        self._force_refresh = False
        self._last_token: str | None = None

    def _load(self, auth_state: str) -> None:
        try:
            if not isinstance(json.loads(auth_state), dict):
                raise ValueError("not a token cache")
            self._cache.deserialize(auth_state)
        except (ValueError, TypeError):
            # Never the content: it holds tokens.
            logger.warning("microsoft: ignoring an unreadable auth state; tokens will be renewed")
            self._cache = msal.SerializableTokenCache()

    def auth_state(self) -> str | None:
        """msal's token cache, serialized, when it changed since it was loaded or last returned."""
        with self._lock:
            if not self._cache.has_state_changed:
                return None
            state: str = self._cache.serialize()
            return state

    def close(self) -> None:
        self.session.close()
        self._pool.release()

    def _msal_app(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            creds = self._credentials
            try:
                # Construction fetches the tenant's OpenID configuration.
                self._app = msal.ConfidentialClientApplication(
                    creds["client_id"],
                    client_credential=creds["client_secret"],
                    authority=self._authority,
                    http_client=self.session,
                    instance_discovery=False,
                    token_cache=self._cache,
                )
            except ValueError as exc:
                raise_for_discovery(exc, self.session.last_status, self.session.last_retry_after)
            except (MsalServiceError, requests.RequestException) as exc:
                self._unreachable(exc)
        app: msal.ConfidentialClientApplication = self._app
        return app

    def _unreachable(self, exc: Exception) -> NoReturn:
        raise_identity_unreachable(exc, self.session.last_status, self.session.last_retry_after)

    def access_token(self) -> str:
        """A token for Graph: msal's cached one while it is valid, else a new one."""
        with self._lock:
            app = self._msal_app()
            creds = self._credentials
            try:
                if creds["type"] == "client_credentials":
                    # msal answers from its cache until the token is close to expiry.
                    result = app.acquire_token_for_client(scopes=APP_SCOPES)
                else:
                    result = None
                    accounts = app.get_accounts()
                    if accounts:
                        result = app.acquire_token_silent(
                            DELEGATED_SCOPES,
                            account=accounts[0],
                            force_refresh=self._force_refresh,
                        )
                    if not result or "access_token" not in result:
                        result = app.acquire_token_by_refresh_token(
                            creds["refresh_token"], scopes=DELEGATED_SCOPES
                        )
            except (MsalServiceError, requests.RequestException) as exc:
                self._unreachable(exc)
            self._force_refresh = False
            if isinstance(result, dict) and isinstance(result.get("access_token"), str):
                self._last_token = result["access_token"]
                return self._last_token
            details: dict[str, Any] = result if isinstance(result, dict) else {}
            raise_for_token_error(details, self.session.last_status, self.session.last_retry_after)

    def drop(self, rejected: str) -> None:
        """Forget `rejected`, a token Graph refused, so the next request gets a new one."""
        with self._lock:
            if self._app is None or rejected != self._last_token:
                return  # another request has replaced it already
            self._last_token = None
            if self._credentials["type"] == "client_credentials":
                self._app.remove_tokens_for_client()
            else:
                self._force_refresh = True
