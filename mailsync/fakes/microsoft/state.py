"""Everything one fake Microsoft knows: tenants, tokens, mailboxes, and the counters, faults
and limits its admin surface drives."""

from __future__ import annotations

import json
import random
import secrets
import string
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from mailsync.fakes.consent import ConsentBook
from mailsync.fakes.control import FakeControl
from mailsync.fakes.faults import MailboxFaults
from mailsync.fakes.microsoft.content import b64url
from mailsync.fakes.microsoft.gates import DeltaGates
from mailsync.fakes.microsoft.limits import MailboxLimits
from mailsync.fakes.microsoft.mailbox import Mailbox

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
# What the fake "user" consented to for the mailsync app; anything else is a consent error.
CONSENTED_SCOPES = frozenset({"Mail.Read", "Mail.ReadBasic", "User.Read"})
MAIL_READ_SCOPES = frozenset({"Mail.Read", "Mail.ReadWrite"})


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """A JWT-shaped string; nobody verifies it (the fake looks tokens up, msal only decodes)."""
    header = {"typ": "JWT", "alg": "RS256", "kid": "mailsync-fake"}
    return ".".join(
        [
            b64url(json.dumps(header, separators=(",", ":")).encode()),
            b64url(json.dumps(claims, separators=(",", ":")).encode()),
            b64url(secrets.token_bytes(32)),
        ]
    )


@dataclass
class Tenant:
    tenant_id: str
    client_id: str
    client_secret: str
    domains: set[str] = field(default_factory=set)


@dataclass
class AccessTokenInfo:
    tenant_id: str
    client_id: str
    address: str | None  # None for app-only tokens
    scopes: frozenset[str]
    expires_at: float


@dataclass
class RefreshTokenInfo:
    tenant_id: str
    client_id: str
    address: str


class FakeMicrosoftState:
    """Everything the fake knows; every public method takes the lock (control, faults and
    limits have their own)."""

    # `limit`: how many requests of one mailbox are served at once (Outlook's MailboxConcurrency).
    def __init__(self, seed: int, seed_messages: int, token_lifetime: int, limit: int) -> None:
        self.seed = seed
        self.seed_messages = seed_messages
        self.token_lifetime = token_lifetime
        self.lock = threading.RLock()
        self.tenants: dict[str, Tenant] = {}
        self.domain_tenants: dict[str, str] = {}
        self.mailboxes: dict[str, Mailbox] = {}
        self.object_ids: dict[str, str] = {}
        self.refresh_tokens: dict[str, RefreshTokenInfo] = {}
        self.user_refresh_tokens: dict[str, str] = {}  # the one handed out by /_admin
        self.access_tokens: dict[str, AccessTokenInfo] = {}
        self.revoked_refresh_tokens: set[str] = set()  # AADSTS50173 rather than "unknown"
        # Encrypted so clients cannot lean on their content; the key is per process, so state
        # tokens from an earlier fake process are unknown sync state here.
        self._fernet = Fernet(Fernet.generate_key())
        # The admin surface's handles on the Graph calls: counted and faulted per operation
        # (control), faulted and held per mailbox (faults), throttled per mailbox (limits),
        # held per folder of a mailbox (gates, delta only).
        self.control = FakeControl()
        self.faults = MailboxFaults()
        self.limits = MailboxLimits(limit)
        self.gates = DeltaGates()
        self.consent = ConsentBook()  # authorization and device codes, users' consent plans
        # Imported here: subscriptions answers with errors.py's faults, which import this.
        from mailsync.fakes.microsoft.subscriptions import Subscriptions

        self.subscriptions = Subscriptions()

    # --- admin -------------------------------------------------------------------------

    def _tenant_for(self, domain: str, tenant_id: str | None) -> Tenant:
        if tenant_id is None:
            tenant_id = self.domain_tenants.get(domain) or str(
                uuid.uuid5(uuid.NAMESPACE_DNS, f"mailsync-fake:{self.seed}:{domain}")
            )
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            rng = random.Random(f"{self.seed}:tenant:{tenant_id}")
            alphabet = string.ascii_letters + string.digits + "~_-."
            secret = (
                "".join(rng.choices(alphabet, k=3)) + "8Q~" + "".join(rng.choices(alphabet, k=34))
            )
            tenant = Tenant(
                tenant_id=tenant_id,
                client_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                client_secret=secret,
            )
            self.tenants[tenant_id] = tenant
        tenant.domains.add(domain)
        self.domain_tenants.setdefault(domain, tenant_id)
        return tenant

    def create_mailbox(
        self, address: str, messages: int | None, tenant_id: str | None, spread: bool = False
    ) -> tuple[dict[str, Any], bool]:
        """Credentials for `address`, creating (and seeding) it first; True when created."""
        address = address.lower()
        with self.lock:
            mailbox = self.mailboxes.get(address)
            created = mailbox is None
            if mailbox is None:
                tenant = self._tenant_for(address.split("@", 1)[1], tenant_id)
                mailbox = Mailbox(address, tenant.tenant_id, self.seed)
                mailbox.seed(self.seed_messages if messages is None else messages, spread=spread)
                mailbox.on_change = self.subscriptions.changed
                self.mailboxes[address] = mailbox
                self.object_ids[mailbox.object_id] = address
                rng = random.Random(f"{self.seed}:refresh:{address}")
                refresh_token = "0.AXoA" + b64url(rng.randbytes(120))
                self.refresh_tokens[refresh_token] = RefreshTokenInfo(
                    tenant.tenant_id, tenant.client_id, address
                )
                self.user_refresh_tokens[address] = refresh_token
            elif tenant_id is not None and tenant_id != mailbox.tenant_id:
                raise ValueError("mailbox already exists in another tenant")
            tenant = self.tenants[mailbox.tenant_id]
            app_credentials = {
                "tenant_id": tenant.tenant_id,
                "client_id": tenant.client_id,
                "client_secret": tenant.client_secret,
            }
            body = {
                "address": address,
                "credentials": {"type": "client_credentials", **app_credentials},
                "delegated": {
                    "type": "refresh_token",
                    **app_credentials,
                    "refresh_token": self.user_refresh_tokens[address],
                },
            }
            return body, created

    def revoke(self, address: str) -> dict[str, Any]:
        """What a user's "sign out everywhere" (revokeSignInSessions) does: every refresh and
        delegated access token of the mailbox stops working; /_admin hands out a new one."""
        address = address.lower()
        with self.lock:
            mailbox = self.mailboxes.get(address)
            if mailbox is None:
                raise KeyError(address)
            for token, info in list(self.refresh_tokens.items()):
                if info.address == address:
                    del self.refresh_tokens[token]
                    self.revoked_refresh_tokens.add(token)
            for token, access in list(self.access_tokens.items()):
                if access.address == address:
                    del self.access_tokens[token]
            tenant = self.tenants[mailbox.tenant_id]
            fresh = "0.AXoA" + b64url(secrets.token_bytes(120))
            self.refresh_tokens[fresh] = RefreshTokenInfo(
                tenant.tenant_id, tenant.client_id, address
            )
            self.user_refresh_tokens[address] = fresh
        body, _ = self.create_mailbox(address, None, None)
        return body

    def mailbox(self, address_or_id: str) -> Mailbox | None:
        key = address_or_id.lower()
        with self.lock:
            return self.mailboxes.get(self.object_ids.get(key, key))

    def exists(self, address_or_id: str) -> bool:
        return self.mailbox(address_or_id) is not None

    def expire_access_tokens(self) -> int:
        with self.lock:
            now = time.time()
            for info in self.access_tokens.values():
                info.expires_at = min(info.expires_at, now)
            return len(self.access_tokens)

    # --- identity ----------------------------------------------------------------------

    def resolve_tenant(self, tenant: str) -> Tenant | None:
        with self.lock:
            tenant_id = self.domain_tenants.get(tenant.lower(), tenant)
            return self.tenants.get(tenant_id)

    def issue_access_token(
        self, tenant: Tenant, address: str | None, scopes: frozenset[str]
    ) -> str:
        """A Graph access token: app-only (`address` None, roles) or delegated (scp)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": GRAPH_RESOURCE,
            "iss": f"https://sts.windows.net/{tenant.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime,
            "appid": tenant.client_id,
            "app_displayname": "mailsync",
            "tid": tenant.tenant_id,
            "ver": "1.0",
            "uti": b64url(secrets.token_bytes(16)),
        }
        with self.lock:
            if address is None:
                claims["roles"] = sorted(scopes)
            else:
                mailbox = self.mailboxes[address]
                claims.update(
                    scp=" ".join(sorted(scopes)),
                    upn=address,
                    unique_name=address,
                    oid=mailbox.object_id,
                    name=mailbox.display_name,
                )
            token = unsigned_jwt(claims)
            self.access_tokens[token] = AccessTokenInfo(
                tenant.tenant_id, tenant.client_id, address, scopes, now + self.token_lifetime
            )
        return token

    def rotate_refresh_token(self, info: RefreshTokenInfo) -> str:
        # Like AAD for confidential clients: the new token is issued, the old stays valid.
        token = "0.AXoA" + b64url(secrets.token_bytes(120))
        with self.lock:
            self.refresh_tokens[token] = info
        return token

    def lookup_refresh_token(self, token: str) -> RefreshTokenInfo | None:
        with self.lock:
            return self.refresh_tokens.get(token)

    def lookup_access_token(self, token: str) -> AccessTokenInfo | None:
        with self.lock:
            return self.access_tokens.get(token)

    # --- delta state tokens ------------------------------------------------------------

    def encode_state(self, payload: dict[str, Any]) -> str:
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return self._fernet.encrypt(raw).decode().rstrip("=")

    def decode_state(self, token: str) -> dict[str, Any] | None:
        """The payload of a token this process issued, or None for anything else."""
        try:
            raw = self._fernet.decrypt(token + "=" * (-len(token) % 4))
            payload = json.loads(raw)
        except (InvalidToken, ValueError, TypeError):
            return None
        return payload if isinstance(payload, dict) else None
