"""The providers' push wire formats: Pub/Sub push bodies and OIDC tokens (verified as
google-auth verifies ID tokens, against keys served over HTTP), Graph notification bodies."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mailsync.errors import PushVerificationError
from mailsync.fakes.gmail.pubsub import Signer
from mailsync.providers.gmail.push import PushTokenVerifier, parse_push
from mailsync.providers.microsoft.subscriptions import parse_notifications

AUD = "https://mailsync.example.com/v1/push/gmail"
ACCOUNT = "push@p.iam.gserviceaccount.com"


@pytest.fixture
def keys() -> Iterator[tuple[list[Signer], str, list[int]]]:
    """Signers whose certificates a local server serves (the first list item's, swappable),
    its URL, and how many times the keys were fetched."""
    signers, fetches = [Signer()], [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            fetches[0] += 1
            body = json.dumps(signers[0].certs()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=3600")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield signers, f"http://127.0.0.1:{server.server_address[1]}/certs", fetches
    finally:
        server.shutdown()
        server.server_close()


def _claims(**override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "aud": AUD,
        "email": ACCOUNT,
        "email_verified": True,
        "iss": "https://accounts.google.com",
        "iat": now,
        "exp": now + 600,
        "sub": "1",
    }
    return {**claims, **override}


def test_a_genuine_token_verifies_and_every_other_is_refused(
    keys: tuple[list[Signer], str, list[int]],
) -> None:
    """Signed by the served key with our aud, Google's issuer and the service account: its
    claims. Another key, aud, issuer, email, an unverified email, an expired or garbled
    token: PushVerificationError."""
    signers, url, _ = keys
    verifier = PushTokenVerifier(url)
    signer = signers[0]
    assert verifier.verify(signer.token(_claims()), AUD, ACCOUNT)["email"] == ACCOUNT
    stranger = Signer()
    stranger.kid = signer.kid  # claims the served key's id, signs with its own
    refused = [
        stranger.token(_claims()),
        signer.token(_claims(aud="https://elsewhere.example/push")),
        signer.token(_claims(iss="https://evil.example")),
        signer.token(_claims(email="intruder@evil.example")),
        signer.token(_claims(email_verified=False)),
        signer.token(_claims(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)),
        "not.a.token",
        "",
    ]
    for token in refused:
        with pytest.raises(PushVerificationError):
            verifier.verify(token, AUD, ACCOUNT)
    verifier.close()


def test_keys_are_cached_and_read_again_for_an_unknown_key_id(
    keys: tuple[list[Signer], str, list[int]],
) -> None:
    """Within the certificates' max-age the keys are fetched once; a token of a key id not
    among them (Google rotated its keys) makes one fetch and then verifies."""
    signers, url, fetches = keys
    verifier = PushTokenVerifier(url)
    for _ in range(5):
        verifier.verify(signers[0].token(_claims()), AUD, ACCOUNT)
    assert fetches[0] == 1
    signers[0] = Signer()
    verifier.verify(signers[0].token(_claims()), AUD, ACCOUNT)
    assert fetches[0] == 2
    verifier.close()


def test_pubsub_push_bodies() -> None:
    """Pub/Sub's push body with Gmail's data parses to address, history id and message id;
    anything else (no message, data not base64 or not Gmail's) is None."""
    data = base64.b64encode(json.dumps({"emailAddress": "a@b.c", "historyId": 42}).encode())
    body = {"message": {"data": data.decode(), "messageId": "7"}, "subscription": "s"}
    push = parse_push(body)
    assert push is not None and (push.email_address, push.history_id, push.message_id) == (
        "a@b.c",
        "42",
        "7",
    )
    bad_data = base64.b64encode(b'{"emailAddress": 1}').decode()
    for wrong in ({}, [], {"message": {"data": "%%%"}}, {"message": {"data": bad_data}}):
        assert parse_push(wrong) is None


def test_graph_notification_bodies() -> None:
    """Graph's {"value": [...]} parses to subscription id, clientState, change type or
    lifecycle event; a body of another shape is None."""
    body = {
        "value": [
            {"subscriptionId": "s1", "clientState": "c", "changeType": "created"},
            {"subscriptionId": "s1", "clientState": "c", "lifecycleEvent": "missed"},
        ]
    }
    items = parse_notifications(body)
    assert items is not None
    assert [(i.change_type, i.lifecycle_event) for i in items] == [
        ("created", None),
        (None, "missed"),
    ]
    for wrong in ({}, {"value": {}}, {"value": [{"clientState": "c"}]}, [1]):
        assert parse_notifications(wrong) is None
