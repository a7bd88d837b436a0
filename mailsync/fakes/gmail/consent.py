"""Google's consent side: OAuth clients, the authorization endpoint (/o/oauth2/v2/auth) and
the grants it hands out (authorization code + PKCE, then refresh tokens of the grant)."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from mailsync.fakes.consent import ConsentBook, Grant, consent_page, error_page, pkce_ok
from mailsync.fakes.gmail.mailbox import Mailbox

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    redirect_uris: list[str] = field(default_factory=list)

    def allows(self, redirect_uri: str) -> bool:
        """Registered exactly, or a loopback address on any port (Google's desktop clients)."""
        if redirect_uri in self.redirect_uris:
            return True
        parts = urlsplit(redirect_uri)
        return parts.scheme == "http" and (parts.hostname or "") in ("127.0.0.1", "localhost")


@dataclass
class UserGrant:
    """A refresh token issued by a code exchange: the client, the user, what was granted."""

    client_id: str
    address: str
    scopes: list[str]


class OAuthClientIn(BaseModel):
    redirect_uris: list[str] = []


class Consent:
    """Registered clients, consent (ConsentBook) and the grants' refresh tokens."""

    def __init__(self, lock: threading.RLock, mailboxes: dict[str, Mailbox]) -> None:
        self.lock = lock
        self.mailboxes = mailboxes
        self.clients: dict[str, OAuthClient] = {}
        self.grants: dict[str, UserGrant] = {}  # refresh token -> grant
        self.book = ConsentBook()

    def register(self, redirect_uris: list[str]) -> OAuthClient:
        client = OAuthClient(
            f"{secrets.randbelow(10**12):012d}-mailsync.apps.googleusercontent.com",
            "GOCSPX-" + secrets.token_urlsafe(18),
            list(redirect_uris),
        )
        with self.lock:
            self.clients[client.client_id] = client
        return client

    def client(self, client_id: str, client_secret: str | None = None) -> OAuthClient | None:
        with self.lock:
            client = self.clients.get(client_id)
        if client is None or (client_secret is not None and client_secret != client.client_secret):
            return None
        return client

    def issue_refresh_token(self, grant: Grant) -> str:
        token = "1//0g" + secrets.token_urlsafe(40)
        with self.lock:
            self.grants[token] = UserGrant(grant.client_id, grant.address, list(grant.scopes))
        return token

    def revoke_address(self, address: str) -> None:
        with self.lock:
            for token, grant in list(self.grants.items()):
                if grant.address == address.lower():
                    del self.grants[token]

    def authorize(self, params: dict[str, str], action: str) -> Response:
        """GET (and the consent form's POST of) /o/oauth2/v2/auth."""
        client = self.client(params.get("client_id", ""))
        if client is None:
            return error_page(401, "invalid_client", "The OAuth client was not found.")
        redirect_uri = params.get("redirect_uri", "")
        if not client.allows(redirect_uri):
            return error_page(400, "redirect_uri_mismatch", "Error 400: redirect_uri_mismatch")
        state = params.get("state")
        if params.get("response_type") != "code":
            return self.book.decide_error(redirect_uri, state, "unsupported_response_type")
        method = params.get("code_challenge_method")
        if params.get("code_challenge") and method not in (None, "S256", "plain"):
            return self.book.decide_error(redirect_uri, state, "invalid_request")
        scopes = params.get("scope", "").split()
        hint = params.get("login_hint", "").lower()
        with self.lock:
            known = hint in self.mailboxes
            first = next(iter(self.mailboxes), "")
        if not known:
            return consent_page(action, {k: v for k, v in params.items() if k != "login_hint"},
                                scopes, first)  # fmt: skip
        grant = Grant(
            client.client_id, hint, scopes, redirect_uri,
            params.get("code_challenge"), method, params.get("nonce"),
        )  # fmt: skip
        return self.book.decide(grant, redirect_uri, state)

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]] | Grant:
        """The authorization_code grant's checks; the grant, or an OAuth error."""
        client = self.client(form.get("client_id", ""), form.get("client_secret", ""))
        if client is None:
            return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
        grant = self.book.redeem(form.get("code", ""))
        if grant is None or grant.client_id != client.client_id:
            return 400, {"error": "invalid_grant", "error_description": "Malformed auth code."}
        if grant.redirect_uri != form.get("redirect_uri"):
            return 400, {"error": "redirect_uri_mismatch", "error_description": "Bad Request"}
        if not pkce_ok(grant, form.get("code_verifier")):
            return 400, {"error": "invalid_grant", "error_description": "Invalid code verifier."}
        return grant


def consent_router(consent: Consent) -> APIRouter:
    router = APIRouter()
    action = "/o/oauth2/v2/auth"

    @router.get(action)
    def authorize(request: Request) -> Response:
        return consent.authorize(dict(request.query_params), action)

    @router.post(action)
    async def approve(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        return consent.authorize(form, action)

    @router.post("/_admin/oauth-clients", status_code=201)
    def register(spec: OAuthClientIn | None = None) -> dict[str, Any]:
        client = consent.register(spec.redirect_uris if spec else [])
        return {
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "redirect_uris": client.redirect_uris,
        }

    return router
