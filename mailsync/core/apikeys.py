"""API keys: `wbk_` + 40 random characters, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, select

from mailsync.db.tables import ApiKey, as_utc, utcnow

PREFIX = "wbk_"
_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(r"^wbk_[A-Za-z0-9]{32,128}$")
SCOPES = frozenset(
    {
        "write:email",
        "read:email",
        "write:webhooks",
        "read:webhooks",
        "write:mailboxes",
        "read:mailboxes",
    }
)


def hash_key(plaintext: str) -> str:
    # Keys carry ~238 bits of entropy, so an unsalted fast hash cannot be brute-forced.
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_key() -> str:
    return PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(40))


def create_api_key(
    session: Session,
    workspace_id: str,
    scopes: list[str],
    *,
    name: str = "",
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its plaintext, which is never stored."""
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(unknown)}")
    plaintext = generate_key()
    key = ApiKey(
        workspace_id=workspace_id,
        name=name,
        prefix=plaintext[:8],
        key_hash=hash_key(plaintext),
        scopes=sorted(set(scopes)),
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    return key, plaintext


@dataclass(frozen=True)
class Principal:
    """Who a request acts as."""

    key_id: str
    workspace_id: str
    scopes: frozenset[str]


def authenticate(session: Session, presented: str) -> Principal | None:
    """The key's principal, or None for a malformed, unknown, revoked or expired key."""
    if not _KEY_RE.match(presented):
        return None
    digest = hash_key(presented)
    key = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        return None
    now = utcnow()
    if key.revoked_at is not None:
        return None
    expires = as_utc(key.expires_at)
    if expires is not None and expires <= now:
        return None
    return Principal(key.id, key.workspace_id, frozenset(key.scopes))


def revoke_api_key(session: Session, key_id: str) -> bool:
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
    return True
