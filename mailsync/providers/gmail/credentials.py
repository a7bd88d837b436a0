"""Gmail credentials and tokens: the credentials document, google-auth objects, stored tokens."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import google.auth.credentials
import google.auth.transport
from google.oauth2 import service_account
from google.oauth2.credentials import Credentials as OAuthCredentials

from mailsync.providers.base import ProviderEndpoints

SCOPES = ["https://www.googleapis.com/auth/gmail.readonly"]


def validate_credentials(credentials: dict[str, Any]) -> dict[str, Any]:
    """Check a Gmail credentials dict and return it normalized; errors never echo values."""
    if not isinstance(credentials, dict):
        raise ValueError("gmail credentials must be an object")
    kind = credentials.get("type")
    if kind == "oauth":
        out: dict[str, Any] = {"type": "oauth"}
        for key in ("client_id", "client_secret", "refresh_token"):
            value = credentials.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"gmail oauth credentials need a non-empty string '{key}'")
            out[key] = value.strip()
        return out
    if kind == "service_account":
        info = credentials.get("info")
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                raise ValueError("gmail service_account 'info' is not valid JSON") from None
        if not isinstance(info, dict):
            raise ValueError("gmail service_account credentials need an 'info' object")
        for key in ("client_email", "private_key"):
            if not isinstance(info.get(key), str) or not info[key].strip():
                raise ValueError(f"gmail service_account info needs a non-empty string '{key}'")
        if "PRIVATE KEY-----" not in info["private_key"]:
            raise ValueError("gmail service_account 'private_key' is not a PEM private key")
        return {"type": "service_account", "info": dict(info)}
    raise ValueError("gmail credentials 'type' must be 'oauth' or 'service_account'")


class _OAuthCredentials(OAuthCredentials):
    """OAuth user credentials that refresh through the provider's own transport.

    googleapiclient's batch refreshes (initial, and on a 401 part) go through a bare
    httplib2.Http() of its own, with neither endpoints.ca_bundle nor a timeout."""

    refresh_request: google.auth.transport.Request | None = None

    def refresh(self, request: google.auth.transport.Request) -> None:
        super().refresh(self.refresh_request or request)


class _ServiceAccountCredentials(service_account.Credentials):
    """Service-account credentials pinned to the provider's transport; see _OAuthCredentials."""

    refresh_request: google.auth.transport.Request | None = None

    def refresh(self, request: google.auth.transport.Request) -> None:
        super().refresh(self.refresh_request or request)


GoogleCredentials = _OAuthCredentials | _ServiceAccountCredentials


def google_credentials(
    address: str,
    credentials: dict[str, Any],
    endpoints: ProviderEndpoints,
    refresh_request: google.auth.transport.Request,
) -> GoogleCredentials:
    creds: GoogleCredentials
    if credentials["type"] == "oauth":
        creds = _OAuthCredentials(
            token=None,
            refresh_token=credentials["refresh_token"],
            token_uri=endpoints.google_token_uri,
            client_id=credentials["client_id"],
            client_secret=credentials["client_secret"],
        )
    else:
        info = {**credentials["info"], "token_uri": endpoints.google_token_uri}
        try:
            creds = _ServiceAccountCredentials.from_service_account_info(
                info, scopes=SCOPES, subject=address
            )
        except (ValueError, TypeError):
            # `from None`: the parser's error may quote key material.
            raise ValueError("gmail service_account private_key could not be loaded") from None
    creds.refresh_request = refresh_request
    return creds


def auth_subject(address: str, credentials: dict[str, Any]) -> str:
    """Who a token was issued to, without anything secret: the client and the mailbox."""
    if credentials["type"] == "oauth":
        client = str(credentials["client_id"])
    else:
        client = str(credentials["info"].get("client_email", ""))
    return f"{credentials['type']}:{client}:{address.lower()}"


def seed_token(creds: google.auth.credentials.Credentials, state: str, subject: str) -> bool:
    """Put a stored access token into `creds` when it was issued for `subject`."""
    try:
        data = json.loads(state)
        if data.get("v") != 1 or data.get("for") != subject or not isinstance(data["token"], str):
            return False
        expiry = datetime.fromisoformat(data["expiry"]) if data.get("expiry") else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return False
    if expiry is not None and expiry.tzinfo is not None:
        expiry = expiry.astimezone(UTC).replace(tzinfo=None)  # google-auth's "now" is naive UTC
    creds.token = data["token"]
    creds.expiry = expiry
    return True


def dump_token(creds: google.auth.credentials.Credentials, subject: str) -> str:
    """The access token of `creds` and its expiry, as `seed_token` reads them back. Secret."""
    expiry = creds.expiry
    return json.dumps(
        {
            "v": 1,
            "for": subject,
            "token": creds.token,
            "expiry": expiry.replace(tzinfo=UTC).isoformat() if expiry else None,
        }
    )
