"""Guards that the fake Graph's subscriptions speak Graph's protocol: the validation handshake,
the lifetime bound, change and lifecycle notifications, renewal, expiry, the admin controls.
Driven with mailsync's own GraphSubscriptions (msal + httpx) against a plain HTTP receiver."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from mailsync.db.tables import utcnow
from mailsync.fakes.client import AdminError, MicrosoftAccount, MicrosoftAdmin
from mailsync.fakes.microsoft import create_app
from mailsync.fakes.server import serve_in_thread
from mailsync.fakes.tls import FakeTLS, ensure_tls
from mailsync.providers.base import ProviderEndpoints, ProviderError
from mailsync.providers.microsoft.subscriptions import GraphSubscriptions, parse_notifications
from tests.support.waiting import eventually


@dataclass
class Receiver:
    """Echoes validation tokens (unless `echo` is off) and records every notification."""

    echo: bool = True
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [b for p, b in self.posts if p == path]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlparse(self.path)
            token = parse_qs(url.query).get("validationToken")
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            if token is not None:
                body = token[0].encode() if state.echo else b"no"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            with state.lock:
                state.posts.append((url.path, json.loads(raw)))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Graph:
    url: str
    tls: FakeTLS
    admin: MicrosoftAdmin

    def mailbox(self) -> MicrosoftAccount:
        return self.admin.create_mailbox(f"user-{uuid.uuid4().hex[:8]}@contoso.com", 3)

    def client(self, account: MicrosoftAccount) -> GraphSubscriptions:
        endpoints = ProviderEndpoints(
            microsoft_authority_host=self.url,
            graph_api_url=f"{self.url}/v1.0",
            ca_bundle=str(self.tls.ca_path),
        )
        return GraphSubscriptions(account.address, account.provider_credentials(), endpoints)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graph]:
    tls = ensure_tls(tmp_path_factory.mktemp("tls"))
    with (
        serve_in_thread(create_app(seed_messages=0), tls) as url,
        MicrosoftAdmin(url, tls.ca_path) as admin,
    ):
        yield Graph(url, tls, admin)


def test_creation_needs_the_handshake_and_a_lifetime_within_4230_minutes(
    graph: Graph, receiver: tuple[Receiver, str]
) -> None:
    """A notificationUrl that does not echo validationToken, or an expiry past 4,230 minutes,
    gets Graph's 400 and no subscription; an echoing one gets a subscription on the mailbox."""
    state, url = receiver
    account = graph.mailbox()
    client = graph.client(account)
    try:
        state.echo = False
        with pytest.raises(ProviderError, match="validation request failed"):
            client.create(f"{url}/n", f"{url}/l", "secret", utcnow() + timedelta(hours=1))
        state.echo = True
        with pytest.raises(ProviderError, match="4230 minutes"):
            client.create(f"{url}/n", f"{url}/l", "secret", utcnow() + timedelta(minutes=4300))
        assert graph.admin.subscriptions(account.address) == []
        made = client.create(f"{url}/n", f"{url}/l", "secret", utcnow() + timedelta(hours=1))
        (held,) = graph.admin.subscriptions(account.address)
        assert held.id == made.id and held.change_type == "created,deleted,updated"
        assert abs((held.expiration - made.expires_at).total_seconds()) < 1
    finally:
        client.close()


def test_changes_are_notified_with_client_state_and_lifecycle_events_go_to_their_url(
    graph: Graph, receiver: tuple[Receiver, str]
) -> None:
    """Adding, editing and deleting a message each POST Graph's {"value": [...]} with the
    subscription's id and clientState and the change type; lifecycle events go to the
    lifecycle URL; subscriptionRemoved deletes the subscription."""
    state, url = receiver
    account = graph.mailbox()
    client = graph.client(account)
    try:
        made = client.create(f"{url}/n", f"{url}/l", "s3cret", utcnow() + timedelta(hours=1))
        (added,) = graph.admin.add_messages(account.address, 1)
        graph.admin.update_message(account.address, added, subject="edited")
        graph.admin.delete_message(account.address, added)
        bodies = eventually(
            lambda: state.bodies("/n"), "3 notifications", until=lambda b: len(b) == 3
        )
        items = [i for b in bodies for i in parse_notifications(b) or []]
        assert sorted(i.change_type or "" for i in items) == ["created", "deleted", "updated"]
        assert {(i.subscription_id, i.client_state) for i in items} == {(made.id, "s3cret")}
        assert all(b["value"][0]["resourceData"]["id"] == added for b in bodies)
        graph.admin.lifecycle(made.id, "missed")
        graph.admin.lifecycle(made.id, "subscriptionRemoved")
        events = eventually(
            lambda: state.bodies("/l"), "2 lifecycle events", until=lambda b: len(b) == 2
        )
        assert sorted(b["value"][0]["lifecycleEvent"] for b in events) == [
            "missed",
            "subscriptionRemoved",
        ]
        assert graph.admin.subscriptions(account.address) == []
    finally:
        client.close()


def test_renewal_expiry_deletion_and_the_drop_and_duplicate_controls(
    graph: Graph, receiver: tuple[Receiver, str]
) -> None:
    """PATCH moves the expiry; an expired subscription sends nothing and renewing it is a 404;
    DELETE ends it; the admin drops the next notification and sends the one after twice."""
    state, url = receiver
    account = graph.mailbox()
    client = graph.client(account)
    try:
        made = client.create(f"{url}/n", f"{url}/l", "s", utcnow() + timedelta(hours=1))
        renewed = client.renew(made.id, utcnow() + timedelta(hours=3))
        assert renewed.expires_at - made.expires_at > timedelta(hours=1, minutes=59)
        graph.admin.control_notifications(drop=1, duplicate=1)
        graph.admin.add_messages(account.address, 2)
        eventually(lambda: state.bodies("/n"), "2 POSTs", until=lambda b: len(b) == 2)
        stats = graph.admin.notification_stats()
        assert stats.dropped >= 1 and stats.duplicated >= 1
        graph.admin.expire_subscription(made.id)
        graph.admin.add_messages(account.address, 1)
        with pytest.raises(ProviderError, match="404"):
            client.renew(made.id, utcnow() + timedelta(hours=1))
        other = client.create(f"{url}/n", f"{url}/l", "s", utcnow() + timedelta(hours=1))
        client.delete(other.id)
        client.delete(other.id)  # gone already: still deleted
        assert graph.admin.subscriptions(account.address) == []
        with pytest.raises(AdminError):
            graph.admin.lifecycle(other.id, "missed")
        assert len(state.bodies("/n")) == 2  # nothing after the expiry
    finally:
        client.close()
