"""Gmail's users.watch and a fake Cloud Pub/Sub push subscription behind it.

A watch names a topic; every change of the watched mailbox (a history record) is published to
it as Gmail publishes: data = base64 of {"emailAddress", "historyId"}. Each push subscription
of the topic POSTs the message to its endpoint in Pub/Sub's push format, with an OIDC token in
Authorization: an RS256 JWT signed by this fake's own key (served as Google serves its keys,
kid -> X.509 PEM, at /oauth2/v1/certs) with iss https://accounts.google.com, aud the
subscription's audience (default: its endpoint) and email its service account. A failed push
is tried again a few times. Watches lapse after 7 days; users.stop ends them.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

WATCH_DAYS = 7
ISSUER = "https://accounts.google.com"
_RETRY_DELAYS = (0.2, 1.0, 3.0)


@dataclass
class Watch:
    address: str
    topic: str
    expires_ms: int


@dataclass
class PushSubscription:
    name: str  # projects/<p>/subscriptions/<s>
    topic: str
    endpoint: str
    service_account: str
    audience: str | None = None  # None: the endpoint, as Pub/Sub defaults it


@dataclass
class PushStats:
    published: int = 0
    pushes: int = 0  # POSTs meant (one per message and subscription)
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    duplicated: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Signer:
    """The fake's RS256 key and its self-signed certificate (Google's v1 certs format)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(20)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailsync fake google")])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )

    def certs(self) -> dict[str, str]:
        return {self.kid: self.cert.public_bytes(serialization.Encoding.PEM).decode()}

    def token(self, claims: dict[str, Any]) -> str:
        header = {"alg": "RS256", "kid": self.kid, "typ": "JWT"}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


class FakePubSub:
    """Watches, topics' push subscriptions, and the threads that push."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.signer = Signer()
        self.watches: dict[str, Watch] = {}  # by lower-cased address
        self.subscriptions: dict[str, PushSubscription] = {}
        self.stats = PushStats()
        self._drop = self._duplicate = 0
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pubsub-push")
        self._http = httpx.Client(timeout=10.0)

    # --- Gmail's side -------------------------------------------------------------------

    def watch(self, address: str, topic: str) -> int:
        expires_ms = int((time.time() + WATCH_DAYS * 86400) * 1000)
        with self._lock:
            self.watches[address.lower()] = Watch(address, topic, expires_ms)
        return expires_ms

    def stop(self, address: str) -> None:
        with self._lock:
            self.watches.pop(address.lower(), None)

    def changed(self, address: str, history_id: int) -> None:
        """A watched mailbox changed (called under Gmail's lock: queue, never send)."""
        now_ms = int(time.time() * 1000)
        with self._lock:
            watch = self.watches.get(address.lower())
            if watch is None or watch.expires_ms <= now_ms:
                return
            self.stats.published += 1
            data = json.dumps({"emailAddress": address, "historyId": history_id}).encode()
            message_id = str(int(time.time() * 1e6) + secrets.randbelow(1000))
            sends = []
            for sub in self.subscriptions.values():
                if sub.topic != watch.topic:
                    continue
                self.stats.pushes += 1
                if self._drop > 0:
                    self._drop -= 1
                    self.stats.dropped += 1
                    continue
                copies = 1
                if self._duplicate > 0:
                    self._duplicate -= 1
                    self.stats.duplicated += 1
                    copies = 2
                sends += [(sub, _envelope(sub, data, message_id))] * copies
        for sub, body in sends:
            self._pool.submit(self._push, sub, body)

    # --- Pub/Sub's side -----------------------------------------------------------------

    def put_subscription(self, subscription: PushSubscription) -> None:
        with self._lock:
            self.subscriptions[subscription.name] = subscription

    def delete_subscription(self, name: str) -> bool:
        with self._lock:
            return self.subscriptions.pop(name, None) is not None

    def control(self, drop: int | None, duplicate: int | None) -> dict[str, int]:
        with self._lock:
            if drop is not None:
                self._drop = drop
            if duplicate is not None:
                self._duplicate = duplicate
            return {"drop": self._drop, "duplicate": self._duplicate}

    def topic_known(self, topic: str) -> bool:
        with self._lock:
            return any(s.topic == topic for s in self.subscriptions.values())

    def view(self) -> dict[str, Any]:
        with self._lock:
            return {
                "watches": [
                    {"address": w.address, "topic": w.topic, "expiration": str(w.expires_ms)}
                    for w in self.watches.values()
                ],
                "subscriptions": [vars(s).copy() for s in self.subscriptions.values()],
                "stats": vars(self.stats).copy() | {"statuses": dict(self.stats.statuses)},
            }

    def oidc_token(self, subscription: PushSubscription) -> str:
        now = int(time.time())
        return self.signer.token(
            {
                "aud": subscription.audience or subscription.endpoint,
                "azp": "113774264463038321964",
                "email": subscription.service_account,
                "email_verified": True,
                "exp": now + 3600,
                "iat": now,
                "iss": ISSUER,
                "sub": "113774264463038321964",
            }
        )

    def _push(self, subscription: PushSubscription, body: dict[str, Any]) -> None:
        for delay in (*_RETRY_DELAYS, None):
            headers = {"Authorization": f"Bearer {self.oidc_token(subscription)}"}
            try:
                answer = self._http.post(subscription.endpoint, json=body, headers=headers)
                status = str(answer.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with self._lock:
                self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
                if status in ("102", "200", "201", "202", "204"):  # Pub/Sub's acks
                    self.stats.delivered += 1
                    return
                if delay is None:
                    self.stats.failed += 1
                    return
            time.sleep(delay)


def _envelope(subscription: PushSubscription, data: bytes, message_id: str) -> dict[str, Any]:
    published = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    encoded = base64.b64encode(data).decode()
    return {
        "message": {
            "attributes": {},
            "data": encoded,
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": published,
            "publish_time": published,
        },
        "subscription": subscription.name,
    }
