"""What both fakes' authorization endpoints share: the user's decision (approve at once when
`login_hint` names a mailbox, else a one-button consent page; denials and unticked scopes when
a test asks), single-use authorization codes, PKCE S256 and device codes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

CODE_LIFETIME_S = 600
DEVICE_CODE_LIFETIME_S = 900


class ConsentPlan(BaseModel):
    """How the fake "user" of a mailbox answers the next consent screens (PUT .../consent)."""

    deny: bool = False  # press "Cancel": error=access_denied
    untick: list[str] = Field(default_factory=list)  # granular consent: scopes left unticked


class DeviceApproval(BaseModel):
    address: str


@dataclass
class Grant:
    """What an authorization code (or an approved device code) stands for."""

    client_id: str
    address: str
    scopes: list[str]
    redirect_uri: str = ""
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    nonce: str | None = None
    expires_at: float = 0.0


@dataclass
class DeviceCode:
    client_id: str
    scopes: list[str]
    user_code: str
    expires_at: float
    grant: Grant | None = None  # set once the user approved on the verification page


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def pkce_ok(grant: Grant, verifier: str | None) -> bool:
    """RFC 7636: a code issued with a challenge needs the verifier that hashes to it."""
    if grant.code_challenge is None:
        return True
    if not verifier:
        return False
    method = (grant.code_challenge_method or "plain").upper()
    computed = s256(verifier) if method == "S256" else verifier
    return hmac.compare_digest(computed, grant.code_challenge)


def with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


@dataclass
class ConsentBook:
    """The users' consent plans, and the codes issued and not yet exchanged."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    plans: dict[str, ConsentPlan] = field(default_factory=dict)
    codes: dict[str, Grant] = field(default_factory=dict)
    devices: dict[str, DeviceCode] = field(default_factory=dict)  # device_code -> it

    def plan(self, address: str) -> ConsentPlan:
        with self.lock:
            return self.plans.get(address.lower(), ConsentPlan())

    def set_plan(self, address: str, plan: ConsentPlan) -> None:
        with self.lock:
            self.plans[address.lower()] = plan

    def decide(self, grant: Grant, redirect_uri: str, state: str | None) -> Response:
        """The redirect back to the client: with a code, or error=access_denied."""
        plan = self.plan(grant.address)
        extra = {"state": state} if state is not None else {}
        if plan.deny:
            denied = {"error": "access_denied", "error_description": "The user denied access."}
            return RedirectResponse(with_query(redirect_uri, {**denied, **extra}), 302)
        grant.scopes = [s for s in grant.scopes if s not in plan.untick]
        code = "4/0Ab" + secrets.token_urlsafe(32)
        grant.expires_at = time.monotonic() + CODE_LIFETIME_S
        with self.lock:
            self.codes[code] = grant
        params = {"code": code, **extra, "scope": " ".join(grant.scopes)}
        return RedirectResponse(with_query(redirect_uri, params), 302)

    def decide_error(self, redirect_uri: str, state: str | None, error: str) -> Response:
        params = {"error": error, **({"state": state} if state is not None else {})}
        return RedirectResponse(with_query(redirect_uri, params), 302)

    def redeem(self, code: str) -> Grant | None:
        """The code's grant, once (a second exchange of the same code finds nothing)."""
        with self.lock:
            grant = self.codes.pop(code, None)
        if grant is None or grant.expires_at <= time.monotonic():
            return None
        return grant

    def new_device_code(self, client_id: str, scopes: list[str]) -> tuple[str, DeviceCode]:
        device_code = secrets.token_urlsafe(32)
        user_code = "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(9))
        entry = DeviceCode(client_id, scopes, user_code, time.monotonic() + DEVICE_CODE_LIFETIME_S)
        with self.lock:
            self.devices[device_code] = entry
        return device_code, entry

    def approve_device(self, user_code: str, address: str) -> bool:
        """The user typed `user_code` on the verification page as `address`."""
        with self.lock:
            for entry in self.devices.values():
                if entry.user_code == user_code.strip().upper() and entry.grant is None:
                    plan = self.plan(address)
                    scopes = [s for s in entry.scopes if s not in plan.untick]
                    entry.grant = Grant(entry.client_id, address.lower(), scopes)
                    return True
        return False


def consent_page(action: str, fields: dict[str, str], scopes: list[str], address: str) -> Response:
    """The one-button consent screen: the account to sign in as, and Allow."""
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    listed = "".join(f"<li>{html.escape(s)}</li>" for s in scopes)
    body = (
        "<!doctype html><title>Sign in - fake provider</title>"
        f'<form method="post" action="{html.escape(action)}">{hidden}'
        "<p>mailsync wants to:</p>"
        f"<ul>{listed}</ul>"
        f'<label>Account <input name="login_hint" value="{html.escape(address)}"></label>'
        '<button type="submit">Allow</button></form>'
    )
    return HTMLResponse(body)


def error_page(status: int, error: str, description: str) -> Response:
    """What a provider shows instead of redirecting when the client or its redirect is wrong."""
    body = f"<!doctype html><h1>{html.escape(error)}</h1><p>{html.escape(description)}</p>"
    return HTMLResponse(body, status_code=status)


def consent_admin_router(book: ConsentBook, exists: object) -> APIRouter:
    """PUT/GET /_admin/mailboxes/{address}/consent: how that user answers consent screens."""
    router = APIRouter(prefix="/_admin")
    known = exists if callable(exists) else (lambda _address: True)

    @router.put("/mailboxes/{address}/consent")
    def set_consent(address: str, plan: ConsentPlan) -> Response:
        if not known(address):
            return JSONResponse({"detail": f"no mailbox {address}"}, status_code=404)
        book.set_plan(address, plan)
        return JSONResponse(plan.model_dump())

    @router.post("/device-codes/{user_code}/approve")
    def approve(user_code: str, body: DeviceApproval) -> Response:
        if not known(body.address):
            return JSONResponse({"detail": f"no mailbox {body.address}"}, status_code=404)
        if not book.approve_device(user_code, body.address):
            return JSONResponse({"detail": "no such pending user code"}, status_code=404)
        return JSONResponse({"approved": True})

    return router
