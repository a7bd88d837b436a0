"""Google's OAuth side: POST /token (refresh and JWT grants), service accounts, access tokens."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import APIRouter, Request, Response

from mailsync.fakes.control import FakeControl
from mailsync.fakes.gmail.consent import Consent
from mailsync.fakes.gmail.errors import Fault
from mailsync.fakes.gmail.mailbox import Mailbox

GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

TokenAnswer = tuple[int, dict[str, Any], dict[str, str]]  # status, JSON body, headers


def _oauth_error(status: int, error: str, description: str) -> TokenAnswer:
    return status, {"error": error, "error_description": description}, {}


def _token_fault(fault: Fault) -> TokenAnswer:
    # The OAuth endpoint has its own error shape (RFC 6749), not the JSON-API one.
    if fault.status >= 500:
        status, body, _ = _oauth_error(fault.status, "internal_failure", "Backend Error")
    elif fault.status == 429:
        status, body, _ = _oauth_error(429, "rate_limit_exceeded", "Rate limit exceeded.")
    elif fault.status == 401:
        status, body, _ = _oauth_error(401, "invalid_client", "Unauthorized")
    else:
        status, body, _ = _oauth_error(fault.status, "invalid_grant", "Injected failure.")
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    return status, body, headers


def _b64url_json(segment: str) -> dict[str, Any]:
    data = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    if not isinstance(data, dict):
        raise ValueError("JWT segment is not an object")
    return data


@dataclass
class _AccessToken:
    address: str
    expires_at: float  # time.monotonic()


@dataclass
class _ServiceAccount:
    client_email: str
    key_id: str
    public_key: rsa.RSAPublicKey


class FakeOAuth:
    """Issues and checks access tokens for the mailboxes in `mailboxes` (shared, under `lock`)."""

    def __init__(
        self,
        control: FakeControl,
        lock: threading.RLock,
        mailboxes: dict[str, Mailbox],
        token_lifetime: int,
    ) -> None:
        self.control = control
        self.lock = lock
        self.mailboxes = mailboxes
        self.token_lifetime = token_lifetime
        self.tokens: dict[str, _AccessToken] = {}
        self.service_accounts: dict[str, _ServiceAccount] = {}
        self.consent = Consent(lock, mailboxes)

    def authenticate(self, authorization: str | None) -> Mailbox | None:
        """The mailbox a `Bearer` header opens, or None when missing, unknown or expired."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        with self.lock:
            info = self.tokens.get(token.strip())
            if info is None or info.expires_at <= time.monotonic():
                return None
            return self.mailboxes.get(info.address.lower())

    def expire_tokens(self) -> int:
        with self.lock:
            for info in self.tokens.values():
                info.expires_at = 0.0
            return len(self.tokens)

    def drop_tokens(self, address: str) -> None:
        with self.lock:
            for token, info in list(self.tokens.items()):
                if info.address.lower() == address.lower():
                    del self.tokens[token]

    def revoke(self, token: str) -> TokenAnswer:
        """POST /revoke (RFC 7009 as Google answers it): a refresh token ends its grant (the
        mailbox gets a new one, unknown to every client) and its access tokens; an access
        token ends alone; anything else is 400 invalid_token."""
        fault = self.control.record("revoke")
        if fault is not None:
            return _token_fault(fault)
        with self.lock:
            if self.tokens.pop(token, None) is not None:
                return 200, {}, {}
            granted = self.consent.grants.pop(token, None)
            if granted is not None:
                self.drop_tokens(granted.address)
                return 200, {}, {}
            box = next((b for b in self.mailboxes.values() if b.refresh_token == token), None)
            if box is None:
                return _oauth_error(400, "invalid_token", "Token expired or revoked")
            box.refresh_token = "1//0" + secrets.token_urlsafe(40)
        self.drop_tokens(box.address)
        return 200, {}, {}

    def create_service_account(self, client_email: str | None, token_uri: str) -> dict[str, Any]:
        """A service-account key file in Google's JSON format, with a real RSA key."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        key_id = secrets.token_hex(20)
        email = client_email or f"sync-{secrets.token_hex(4)}@mailsync-fake.iam.gserviceaccount.com"
        with self.lock:
            self.service_accounts[email] = _ServiceAccount(email, key_id, key.public_key())
        return {
            "type": "service_account",
            "project_id": "mailsync-fake",
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": str(uuid.uuid4().int)[:21],
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }

    def token(self, form: dict[str, str]) -> TokenAnswer:
        """POST /token with a form-decoded body."""
        fault = self.control.record("token")
        if fault is not None:
            return _token_fault(fault)
        grant = form.get("grant_type")
        if grant == "refresh_token":
            return self._refresh_grant(form)
        if grant == JWT_GRANT:
            return self._jwt_grant(form)
        if grant == "authorization_code":
            return self._code_grant(form)
        return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")

    def _issue(self, address: str, scope: str) -> TokenAnswer:
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = _AccessToken(address, time.monotonic() + self.token_lifetime)
        body = {
            "access_token": token,
            "expires_in": self.token_lifetime,
            "scope": scope,
            "token_type": "Bearer",
        }
        return 200, body, {}

    def _code_grant(self, form: dict[str, str]) -> TokenAnswer:
        exchanged = self.consent.exchange(form)
        if isinstance(exchanged, tuple):
            return exchanged[0], exchanged[1], {}
        status, body, headers = self._issue(exchanged.address, " ".join(exchanged.scopes))
        body["refresh_token"] = self.consent.issue_refresh_token(exchanged)
        return status, body, headers

    def _refresh_grant(self, form: dict[str, str]) -> TokenAnswer:
        if not all(form.get(k) for k in ("client_id", "client_secret", "refresh_token")):
            return _oauth_error(400, "invalid_request", "Missing required parameter.")
        with self.lock:
            granted = self.consent.grants.get(form["refresh_token"])
        if granted is not None:
            if self.consent.client(form["client_id"], form["client_secret"]) is None or (
                granted.client_id != form["client_id"]
            ):
                return _oauth_error(401, "invalid_client", "Unauthorized")
            return self._issue(granted.address, " ".join(granted.scopes))
        with self.lock:
            box = next(
                (b for b in self.mailboxes.values() if b.refresh_token == form["refresh_token"]),
                None,
            )
        if box is None:
            return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        if (form["client_id"], form["client_secret"]) != (box.client_id, box.client_secret):
            return _oauth_error(401, "invalid_client", "Unauthorized")
        return self._issue(box.address, form.get("scope") or GMAIL_SCOPE)

    def _jwt_grant(self, form: dict[str, str]) -> TokenAnswer:
        try:
            head_s, payload_s, sig_s = (form.get("assertion") or "").split(".")
            header, claims = _b64url_json(head_s), _b64url_json(payload_s)
            signature = base64.urlsafe_b64decode(sig_s + "=" * (-len(sig_s) % 4))
        except ValueError:
            return _oauth_error(400, "invalid_grant", "Invalid JWT assertion.")
        with self.lock:
            account = self.service_accounts.get(str(claims.get("iss")))
            box = self.mailboxes.get(str(claims.get("sub") or "").lower())
        if account is None or header.get("alg") != "RS256":
            return _oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            account.public_key.verify(
                signature, f"{head_s}.{payload_s}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return _oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        if float(claims.get("exp", 0)) < time.time():
            return _oauth_error(
                400, "invalid_grant", "Invalid JWT: Token must be a short-lived token."
            )
        if box is None:
            # What Google says when the subject is not a user the delegation covers.
            return _oauth_error(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method.",
            )
        return self._issue(box.address, str(claims.get("scope") or GMAIL_SCOPE))


def _basic_client(header: str) -> dict[str, str]:
    """client_id and client_secret from HTTP Basic auth (RFC 6749 2.3.1), as Google takes them."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return {}
    try:
        client_id, _, secret = base64.b64decode(value.strip()).decode().partition(":")
    except ValueError:
        return {}
    return {"client_id": unquote_plus(client_id), "client_secret": unquote_plus(secret)}


def token_router(oauth: FakeOAuth) -> APIRouter:
    """POST /token, Google's OAuth token endpoint (form in, RFC 6749 JSON out)."""
    router = APIRouter()

    @router.post("/token")
    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        form.update(_basic_client(request.headers.get("authorization", "")))
        status, body, headers = oauth.token(form)
        return Response(
            json.dumps(body), status_code=status, headers=headers, media_type="application/json"
        )

    @router.post("/revoke")
    async def revoke(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        token = form.get("token") or request.query_params.get("token") or ""
        status, body, headers = oauth.revoke(token)
        return Response(
            json.dumps(body), status_code=status, headers=headers, media_type="application/json"
        )

    return router
