"""msal's HTTP client: the process's identity connections, a shared tenant discovery, no env."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from mailsync.providers.microsoft.connections import DISCOVERY, DISCOVERY_PATH, ca_key
from mailsync.providers.microsoft.errors import retry_after


class IdentitySession(requests.Session):
    """msal's HTTP client: no environment CA overrides, a default timeout, and a memory of the
    last response's status and Retry-After (msal's error dicts carry neither).

    Connections are the process's (SharedAdapter), and so is a tenant's OpenID configuration,
    the one answer that is public and the same for everyone: later mailboxes of the tenant skip
    that request. msal's own http_cache stays per instance: it also remembers failed token
    requests, a 429/5xx for seconds under the token URL, client id and scope (and refresh token,
    if any), a 400 for a minute under the exact request. Mailboxes of a tenant synced with its
    app credentials send the very same request, so a shared cache would replay one mailbox's
    outage or refusal to the next without asking the platform."""

    def __init__(self, verify: str | bool, timeout: float, adapter: HTTPAdapter) -> None:
        super().__init__()
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would otherwise replace `verify`.
        self.trust_env = False
        self.verify = verify
        self._timeout = timeout
        self.last_status: int | None = None
        self.last_retry_after: float | None = None
        self.hooks["response"].append(self._remember)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        discovery = (
            str(method).upper() == "GET"
            and not args
            and not kwargs.get("params")
            and urlsplit(str(url)).path.endswith(DISCOVERY_PATH)
        )
        if not discovery:
            return super().request(method, url, *args, **kwargs)
        # Whose trust fetched it is part of the key: a session that would not trust the server
        # must not get its document.
        key = (ca_key(self.verify) if isinstance(self.verify, str) else self.verify, str(url))
        known = DISCOVERY.get(key)
        if known is not None:
            return self._replay(str(url), *known)
        response = super().request(method, url, *args, **kwargs)
        if response.status_code == 200 and _is_openid_configuration(response.content):
            # Failures are never kept: the next mailbox asks again.
            DISCOVERY.put(key, (response.content, dict(response.headers), response.encoding))
        return response

    def _replay(
        self, url: str, content: bytes, headers: dict[str, str], encoding: str | None
    ) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response.reason = "OK"
        response.url = url
        response.headers = CaseInsensitiveDict(headers)
        response.encoding = encoding
        response._content = content
        self._remember(response)
        return response

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last_status = response.status_code
        self.last_retry_after = retry_after(response.headers.get("Retry-After"))


def _is_openid_configuration(content: bytes) -> bool:
    """Whether msal can use `content` as a tenant's configuration (else it is not worth keeping)."""
    try:
        document = json.loads(content)
    except ValueError:
        return False
    return isinstance(document, dict) and all(
        isinstance(document.get(name), str) for name in ("token_endpoint", "authorization_endpoint")
    )
