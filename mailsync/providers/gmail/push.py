"""Pub/Sub push requests for Gmail watches: the OIDC token's verification, the message's data.

Pub/Sub signs the token of a push subscription with authentication with Google's keys; it is
checked here as google-auth checks ID tokens (`google.auth.jwt.decode`: RS256 signature
against the keys at the certs URL, expiry, audience), then its issuer is Google's and its
`email` the subscription's service account (verified). The keys are cached for the
certificates' Cache-Control max-age (5 minutes when absent) and read again for an unknown key id.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import certifi
import httpx
from google.auth import jwt

from mailsync.errors import PushVerificationError
from mailsync.providers.base import TransientProviderError

ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
_MAX_AGE = re.compile(r"max-age=(\d+)")


@dataclass(frozen=True)
class GmailPush:
    """What a watch's Pub/Sub message says: this mailbox changed, up to this history id."""

    email_address: str
    history_id: str
    message_id: str


def parse_push(body: Any) -> GmailPush | None:
    """Pub/Sub's push body {"message": {"data": base64 JSON, "messageId"}, "subscription"};
    None when it is not that shape or its data is not Gmail's."""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("data"), str):
        return None
    try:
        data = json.loads(base64.b64decode(message["data"], validate=True))
    except (binascii.Error, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    address, history = data.get("emailAddress"), data.get("historyId")
    if not isinstance(address, str) or not isinstance(history, int | str) or "@" not in address:
        return None
    message_id = message.get("messageId") or message.get("message_id") or ""
    return GmailPush(address[:320], str(history)[:32], str(message_id)[:100])


class PushTokenVerifier:
    """Checks push tokens against the signing keys at `certs_url` (cached)."""

    def __init__(self, certs_url: str, ca_bundle: str | None = None) -> None:
        self._url = certs_url
        context = ssl.create_default_context(cafile=certifi.where())
        if ca_bundle:
            context.load_verify_locations(cafile=ca_bundle)
        self._http = httpx.Client(verify=context, trust_env=False, timeout=10.0)
        self._lock = threading.Lock()
        self._certs: dict[str, str] = {}
        self._until = 0.0

    def _keys(self, refresh: bool) -> dict[str, str]:
        with self._lock:
            if refresh or time.monotonic() >= self._until:
                try:
                    response = self._http.get(self._url)
                    response.raise_for_status()
                    certs = response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    raise TransientProviderError("Google's signing keys could not be read") from exc
                if not isinstance(certs, dict):
                    raise TransientProviderError("Google's signing keys are not a key map")
                match = _MAX_AGE.search(response.headers.get("cache-control", ""))
                self._certs = {str(k): str(v) for k, v in certs.items()}
                self._until = time.monotonic() + (int(match[1]) if match else 300)
            return self._certs

    def verify(self, token: str, audience: str, service_account: str) -> dict[str, Any]:
        """The token's claims; PushVerificationError for anything but Pub/Sub's token for us."""
        try:
            header = jwt.decode_header(token)
        except ValueError as exc:
            raise PushVerificationError("malformed token") from exc
        certs = self._keys(refresh=False)
        if header.get("kid") not in certs:
            certs = self._keys(refresh=True)  # Google rotated its keys
        try:
            claims: dict[str, Any] = jwt.decode(token, certs=certs, audience=audience)
        except ValueError as exc:  # signature, expiry, audience, unknown key
            raise PushVerificationError("token does not verify") from exc
        if claims.get("iss") not in ISSUERS:
            raise PushVerificationError("token not issued by Google")
        if claims.get("email") != service_account or claims.get("email_verified") is not True:
            raise PushVerificationError("token not of the push subscription's service account")
        return claims

    def close(self) -> None:
        self._http.close()
