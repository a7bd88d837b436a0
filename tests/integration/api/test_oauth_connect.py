"""The consent flow end to end: POST /v1/mailboxes/connect, the user's browser at the fake
provider's authorization endpoint (real HTTP), GET /v1/oauth/callback exchanging the code with
google-auth-oauthlib / msal against the fakes, and the redirect back to the application; every
refusal, re-authorization, and the state's rules, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import html
import re
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import Session, select

from mailsync.api.app import create_app
from mailsync.core import apikeys, workspaces
from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, OAuthState
from mailsync.orchestration import runtime
from mailsync.settings import Settings
from tests.support.api import ManualClock
from tests.support.stack import FakeProviders

PUBLIC = "https://mailsync.test"
CALLBACK = f"{PUBLIC}/v1/oauth/callback"
APP = "https://app.example/connected"
GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.readonly"


@dataclass
class Flow:
    client: TestClient
    settings: Settings
    fakes: FakeProviders
    clock: ManualClock
    workspace_id: str
    key: str
    tenant_domain: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def browser(self) -> httpx.Client:
        trust = ssl.create_default_context(cafile=str(self.settings.provider_ca_bundle))
        return httpx.Client(verify=trust, trust_env=False)

    def start(self, provider: str, **body: Any) -> httpx.Response:
        payload = {"provider": provider, "redirect_uri": APP, **body}
        return self.client.post("/v1/mailboxes/connect", json=payload, headers=self.auth)

    def consent(self, provider: str, **body: Any) -> dict[str, str]:
        """Start a flow and play the user at the provider: the callback's query parameters."""
        started = self.start(provider, **body)
        assert started.status_code == 201, started.text
        with self.browser() as browser:
            answer = browser.get(started.json()["data"]["authorization_url"])
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert location.startswith(CALLBACK + "?")
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    def callback(self, params: dict[str, str]) -> dict[str, str]:
        """GET the callback as the browser does; the query of where it is sent next."""
        answer = self.client.get("/v1/oauth/callback", params=params, follow_redirects=False)
        assert answer.status_code == 302, answer.text
        target = answer.headers["location"]
        assert target.startswith(APP + "?"), target
        return {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}

    def mailboxes(self) -> list[Mailbox]:
        with Session(get_engine(self.settings.resolved_database_url)) as session:
            query = select(Mailbox).where(Mailbox.workspace_id == self.workspace_id)
            return list(session.exec(query))


@pytest.fixture
def flow(settings: Settings, fakes: FakeProviders) -> Iterator[Flow]:
    """The app with both providers' consent set up against the fakes (mailsync registered as
    a Google OAuth client; the Microsoft tenant's own app), Prefect unreachable."""
    google = fakes.gmail.register_oauth_client([CALLBACK])
    domain = f"t{secrets.token_hex(3)}.example"
    tenant = fakes.microsoft.create_mailbox(f"first@{domain}").credentials
    local = settings.model_copy(
        update={
            "prefect_api_url": "http://127.0.0.1:9/api",
            "google_client_id": google.client_id,
            "google_client_secret": SecretStr(google.client_secret),
            "microsoft_client_id": tenant.client_id,
            "microsoft_client_secret": SecretStr(tenant.client_secret),
            "microsoft_tenant": tenant.tenant_id,
            "public_url": PUBLIC,
            "oauth_redirect_allowlist": f"https://other.example/x, {APP}",
        }
    )
    clock = ManualClock()
    workspace_id = f"ws-{secrets.token_hex(4)}"
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, workspace_id)
        key = apikeys.create_api_key(session, workspace_id, ["write:mailboxes"])[1]
    with TestClient(create_app(local, now=clock), raise_server_exceptions=False) as client:
        yield Flow(client, local, fakes, clock, workspace_id, key, domain)


def address_for(flow: Flow, provider: str) -> str:
    suffix = secrets.token_hex(4)
    if provider == "gmail":
        return flow.fakes.gmail.create_mailbox(f"u-{suffix}@gmail.example", 3).address
    return flow.fakes.microsoft.create_mailbox(f"u-{suffix}@{flow.tenant_domain}", 3).address


@pytest.mark.parametrize("provider", ["gmail", "microsoft"])
def test_a_consent_connects_the_mailbox(flow: Flow, provider: str) -> None:
    """With a login_hint the fake approves at once; the callback exchanges the code (PKCE),
    finds the address at the provider, stores the grant encrypted and sends the user to
    redirect_uri with the mailbox id only (no code, no token). The mailbox is active in the
    flow's workspace and syncs with the stored grant."""
    address = address_for(flow, provider)
    started = flow.start(provider, login_hint=address)
    data = started.json()["data"]
    assert set(data) == {"authorization_url", "expires_at"}
    query = parse_qs(urlsplit(data["authorization_url"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    params = flow.consent(provider, login_hint=address)
    back = flow.callback(params)
    assert set(back) == {"mailbox_id"}, back
    (mailbox,) = flow.mailboxes()
    assert (mailbox.id, mailbox.address, mailbox.status) == (back["mailbox_id"], address, "active")
    sealed = mailbox.credentials_encrypted
    credentials = CredentialBox(flow.settings.fernet_key()).open(sealed)
    assert credentials["refresh_token"] not in sealed
    result = runtime.sync_now(mailbox.id, "incremental", flow.settings)
    assert result.counts.added == 3


def test_without_login_hint_the_user_picks_the_account_on_a_consent_page(flow: Flow) -> None:
    """No login_hint: the fake shows a one-button consent page; submitting it (as the user
    typed their address) redirects to the callback, which connects that mailbox."""
    address = address_for(flow, "gmail")
    started = flow.start("gmail").json()["data"]
    with flow.browser() as browser:
        page = browser.get(started["authorization_url"])
        assert page.status_code == 200 and "<button" in page.text
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
        fields = {k: html.unescape(v) for k, v in fields.items()}
        fields["login_hint"] = address
        action = urlsplit(started["authorization_url"])
        submitted = browser.post(f"{action.scheme}://{action.netloc}{action.path}", data=fields)
    assert submitted.status_code == 302
    params = {k: v[0] for k, v in parse_qs(urlsplit(submitted.headers["location"]).query).items()}
    back = flow.callback(params)
    assert [m.address for m in flow.mailboxes()] == [address]
    assert back == {"mailbox_id": flow.mailboxes()[0].id}


def refused(back: dict[str, str], error: str, words: str) -> None:
    assert set(back) == {"error", "error_description"}, back
    assert back["error"] == error and words in back["error_description"], back


def test_a_state_is_single_use_and_expires_after_ten_minutes(flow: Flow) -> None:
    """The same callback twice: the second is refused (already completed) and connects
    nothing more; a callback 10 minutes after the start is refused; neither shows a token."""
    address = address_for(flow, "gmail")
    params = flow.consent("gmail", login_hint=address)
    assert "mailbox_id" in flow.callback(params)
    refused(flow.callback(params), "invalid_request", "already completed")
    assert len(flow.mailboxes()) == 1

    late = flow.consent("gmail", login_hint=address_for(flow, "gmail"))
    flow.clock.offset = timedelta(minutes=10, seconds=1)
    refused(flow.callback(late), "invalid_request", "10 minutes")
    assert len(flow.mailboxes()) == 1


def test_a_forged_or_missing_state_is_400_and_never_redirects(flow: Flow) -> None:
    """A state no flow has (guessed, or from elsewhere) or none at all: 400 in the error
    envelope, no redirect anywhere, no mailbox; the stored state is only a hash."""
    params = flow.consent("gmail", login_hint=address_for(flow, "gmail"))
    for forged in ({**params, "state": secrets.token_urlsafe(32)}, {"code": params["code"]}):
        answer = flow.client.get("/v1/oauth/callback", params=forged, follow_redirects=False)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_request"
        assert answer.json()["error"]["param"] == "state"
        assert params["code"] not in answer.text
    assert flow.mailboxes() == []
    with Session(get_engine(flow.settings.resolved_database_url)) as session:
        rows = list(
            session.exec(select(OAuthState).where(OAuthState.workspace_id == flow.workspace_id))
        )
    assert [r.state_hash for r in rows] == [hashlib.sha256(params["state"].encode()).hexdigest()]
    assert params["state"] not in repr(rows)


@pytest.mark.parametrize("provider", ["gmail", "microsoft"])
def test_a_denied_consent_or_a_missing_code_connects_nothing(flow: Flow, provider: str) -> None:
    """The user pressing Cancel at the provider comes back with error=access_denied; a
    callback with a state but no code is invalid_request; no mailbox either way."""
    address = address_for(flow, provider)
    flow.fakes.admin(provider).set_consent(address, deny=True)
    params = flow.consent(provider, login_hint=address)
    assert params["error"] == "access_denied" and "code" not in params
    refused(flow.callback(params), "access_denied", "error 'access_denied'")
    flow.fakes.admin(provider).set_consent(address)
    params = flow.consent(provider, login_hint=address)
    refused(flow.callback({"state": params["state"]}), "invalid_request", "no authorization code")
    assert flow.mailboxes() == []


def test_an_unticked_gmail_scope_is_refused_and_the_grant_revoked(flow: Flow) -> None:
    """Google's granular consent: the user unticks the Gmail permission. The callback refuses
    with invalid_scope, stores nothing, and revokes the partial grant at Google."""
    address = address_for(flow, "gmail")
    flow.fakes.gmail.set_consent(address, untick=[GMAIL_SCOPE])
    flow.fakes.gmail.reset_stats()
    params = flow.consent("gmail", login_hint=address)
    refused(flow.callback(params), "invalid_scope", "not granted")
    assert flow.mailboxes() == []
    assert flow.fakes.gmail.stats().get("revoke") == 1


def test_a_redirect_uri_off_the_allow_list_or_bad_input_is_400(flow: Flow) -> None:
    """A redirect_uri not on the allow-list (another host, path, scheme, with a fragment), an
    unknown field or provider, an unknown mailbox_id: refused before any
    flow starts, in the error envelope with `param`."""
    for uri in ("https://evil.example/connected", f"{APP}/more", APP.replace("https", "http"),
                f"{APP}#x", "not a url"):  # fmt: skip
        answer = flow.start("gmail", redirect_uri=uri)
        assert answer.status_code == 400, uri
        assert answer.json()["error"]["param"] == "redirect_uri"
    assert flow.start("gmail", redirect_uri=f"{APP}?from=settings").status_code == 201
    assert flow.start("yahoo").status_code == 400
    assert flow.start("gmail", scopes=["x"]).status_code == 400
    assert flow.start("gmail", login_hint="nobody").json()["error"]["param"] == "login_hint"
    unknown = flow.start("gmail", mailbox_id="mbx_unknown")
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "mailbox_id"
    no_scope = apikeys_key(flow, ["read:mailboxes"])
    denied = flow.client.post(
        "/v1/mailboxes/connect", json={"provider": "gmail", "redirect_uri": APP},
        headers={"Authorization": f"Bearer {no_scope}"},
    )  # fmt: skip
    assert denied.status_code == 403


def apikeys_key(flow: Flow, scopes: list[str]) -> str:
    with session_scope(flow.settings.resolved_database_url) as session:
        return apikeys.create_api_key(session, flow.workspace_id, scopes)[1]


@pytest.mark.parametrize("provider", ["gmail", "microsoft"])
def test_reauthorizing_after_a_revocation_keeps_the_id(flow: Flow, provider: str) -> None:
    """A connected mailbox whose grant the user revoked goes reauth_required on its next
    sync; the flow with its mailbox_id (login_hint defaults to its address) makes it active
    again with the same id, its index reset and rebuilt by the next sync. Signing in with
    another account instead is refused (access_denied) and changes nothing."""
    address = address_for(flow, provider)
    mailbox_id = flow.callback(flow.consent(provider, login_hint=address))["mailbox_id"]
    runtime.sync_now(mailbox_id, "incremental", flow.settings)
    flow.fakes.admin(provider).revoke(address)
    with pytest.raises(Exception, match="refused|401"):
        runtime.sync_now(mailbox_id, "incremental", flow.settings)
    assert flow.mailboxes()[0].status == "reauth_required"

    other = address_for(flow, provider)
    wrong = flow.consent(provider, mailbox_id=mailbox_id, login_hint=other)
    refused(flow.callback(wrong), "access_denied", "not the mailbox's")
    assert flow.mailboxes()[0].status == "reauth_required"

    back = flow.callback(flow.consent(provider, mailbox_id=mailbox_id))
    assert back == {"mailbox_id": mailbox_id}
    (mailbox,) = flow.mailboxes()
    assert (mailbox.status, mailbox.cursor, mailbox.last_synced_at) == ("active", None, None)
    result = runtime.sync_now(mailbox_id, "incremental", flow.settings)
    assert (result.performed_mode, result.counts.added) == ("full", 3)


def test_a_flow_is_bound_to_the_workspace_that_started_it(flow: Flow) -> None:
    """The mailbox lands in the starting workspace; another workspace's key cannot
    re-authorize its mailbox (400 naming mailbox_id, as for an unknown id)."""
    mailbox_id = flow.callback(flow.consent("gmail", login_hint=address_for(flow, "gmail")))[
        "mailbox_id"
    ]
    other = f"ws-{secrets.token_hex(4)}"
    with session_scope(flow.settings.resolved_database_url) as session:
        workspaces.create_workspace(session, other)
        key = apikeys.create_api_key(session, other, ["write:mailboxes", "read:mailboxes"])[1]
    auth = {"Authorization": f"Bearer {key}"}
    body = {"provider": "gmail", "redirect_uri": APP, "mailbox_id": mailbox_id}
    foreign = flow.client.post("/v1/mailboxes/connect", json=body, headers=auth)
    assert foreign.status_code == 400 and foreign.json()["error"]["param"] == "mailbox_id"
    assert flow.client.get("/v1/mailboxes", headers=auth).json()["data"] == []
    assert [m.id for m in flow.mailboxes()] == [mailbox_id]
