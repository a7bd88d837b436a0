"""`mailsync mailbox connect ... --oauth | --device-code`: the consent flow for self-hosters
without a public URL. --oauth redirects to a loopback listener of this process (it prints the
URL, opens a browser when it can, and waits); --device-code is msal's device flow (Microsoft)."""

from __future__ import annotations

import secrets
import threading
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mailsync import db
from mailsync.cli.common import console, err, fail
from mailsync.core import workspaces
from mailsync.core.consent import ConsentConfig
from mailsync.db.crypto import CredentialBox
from mailsync.errors import OAuthFlowError
from mailsync.providers.consent import ConsentGrant, finish_consent, start_consent
from mailsync.settings import Settings

# Replaced in tests by what plays the user (the seam is the browser, nothing of mailsync's).
open_browser: Callable[[str], bool] = webbrowser.open

_SETUP = {
    "gmail": "set MAILSYNC_GOOGLE_CLIENT_ID and MAILSYNC_GOOGLE_CLIENT_SECRET (a Desktop or "
    "Web OAuth client; README, Connecting mailboxes)",
    "microsoft": "set MAILSYNC_MICROSOFT_CLIENT_ID, _CLIENT_SECRET and _TENANT (README, "
    "Connecting mailboxes)",
}
NO_GMAIL_DEVICE_FLOW = (
    "Google's device flow does not allow Gmail scopes (limited-input devices get only a few "
    "basic scopes); use --oauth, which redirects to this machine"
)


class _Listener(HTTPServer):
    answer: dict[str, str] | None = None


class _Callback(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        if "state" not in query:
            self.send_response(404)
            self.end_headers()
            return
        self.server.answer = query  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(b"<!doctype html><p>mailsync: done; you can close this window.</p>")

    def log_message(self, *args: Any) -> None:  # the query holds the code: never logged
        pass


def _client(settings: Settings, provider: str) -> Any:
    client = ConsentConfig.from_settings(settings).clients.get(provider)
    if client is None:
        raise fail(f"{provider} consent is not set up: {_SETUP[provider]}")
    return client


def loopback_consent(
    settings: Settings, provider: str, login_hint: str | None, timeout: float
) -> ConsentGrant:
    """The authorization code flow with a redirect to http://127.0.0.1:<port>/ of this process."""
    client = _client(settings, provider)
    endpoints = settings.provider_endpoints
    listener = _Listener(("127.0.0.1", 0), _Callback)
    redirect_uri = f"http://127.0.0.1:{listener.server_port}/"
    state = secrets.token_urlsafe(32)
    try:
        started = start_consent(provider, client, endpoints, redirect_uri, state, login_hint)
        console.print("open this URL to grant mailsync read access to the mailbox:")
        print(started.authorization_url, flush=True)
        if open_browser(started.authorization_url):
            console.print("(opened in your browser)")
        console.print(f"waiting up to {timeout:g} s for the consent...")
        answer = _wait(listener, timeout)
    finally:
        listener.server_close()
    if answer is None:
        raise fail(f"no answer from the browser within {timeout:g} s; run the command again")
    if not secrets.compare_digest(answer.get("state", ""), state):
        raise fail("the browser came back with another flow's state; run the command again")
    return finish_consent(provider, client, endpoints, started.flow, redirect_uri, answer)


def _wait(listener: _Listener, timeout: float) -> dict[str, str] | None:
    done = threading.Event()

    def serve() -> None:
        listener.timeout = 0.5
        while listener.answer is None and not done.is_set():
            listener.handle_request()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    thread.join(timeout)
    done.set()
    thread.join(5)
    return listener.answer


def announce_device_code(message: str, verification_uri: str, user_code: str) -> None:
    """What the user is told to do (msal's message: the page and the code)."""
    console.print(message or f"open {verification_uri} and enter the code {user_code}")


def device_consent(settings: Settings, provider: str) -> ConsentGrant:
    if provider == "gmail":
        raise fail(NO_GMAIL_DEVICE_FLOW)
    from mailsync.providers.microsoft.consent import device_flow

    def show(message: str, uri: str, code: str) -> None:
        announce_device_code(message, uri, code)

    return device_flow(_client(settings, provider), settings.provider_endpoints, show)


def connect_by_consent(
    settings: Settings,
    provider: str,
    workspace: str,
    address: str | None,
    *,
    device_code: bool,
    timeout: float,
) -> None:
    """Run the chosen flow, then store the grant for the address the provider names."""
    with db.session_scope(settings.resolved_database_url) as session:
        if not workspaces.workspace_exists(session, workspace):
            raise fail(f"workspace {workspace!r} does not exist")
    try:
        grant = (
            device_consent(settings, provider)
            if device_code
            else loopback_consent(settings, provider, address, timeout)
        )
    except OAuthFlowError as exc:
        raise fail(f"{exc.error}: {exc.message}") from exc
    if address is not None and grant.address.lower() != address.lower():
        err.print(f"[yellow]note:[/yellow] signed in as {grant.address}, not {address}")
    with db.session_scope(settings.resolved_database_url) as session:
        mailbox, created = workspaces.connect_mailbox(
            session, CredentialBox(settings.fernet_key()), workspace, provider, grant.address,
            grant.credentials,
        )  # fmt: skip
    verb = "connected" if created else "re-connected (index reset)"
    console.print(f"{provider} mailbox {grant.address} {verb} as {mailbox.id}")
