"""API keys: format, hashing at rest, and every way a key stops being valid."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, select

from mailsync.core import apikeys, workspaces
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import ApiKey, utcnow


@pytest.fixture
def workspace(database_url: str) -> str:
    name = f"ws-{utcnow().timestamp():.0f}-{id(object())}"
    with session_scope(database_url) as session:
        workspaces.create_workspace(session, name)
    return name


def test_key_format_and_hash_only_storage(database_url: str, workspace: str) -> None:
    """A key is wbk_ + 40 alphanumerics, shown once, and only its SHA-256 is stored."""
    with session_scope(database_url) as session:
        key, plaintext = apikeys.create_api_key(session, workspace, ["read:email"])
    assert plaintext.startswith("wbk_") and len(plaintext) == 44 and plaintext[4:].isalnum()
    with Session(get_engine(database_url)) as session:
        stored = session.exec(select(ApiKey).where(ApiKey.id == key.id)).one()
        assert stored.key_hash == apikeys.hash_key(plaintext)
        assert plaintext not in repr(stored.model_dump())
        principal = apikeys.authenticate(session, plaintext)
    assert principal is not None and principal.workspace_id == workspace
    assert principal.scopes == frozenset({"read:email"})


@pytest.mark.parametrize(
    "presented", ["", "wbk_", "wbk_short", "Bearer x", "wbk_" + "a" * 40 + "!", "sk_" + "a" * 40]
)
def test_malformed_and_unknown_keys_are_refused(database_url: str, presented: str) -> None:
    """Malformed or unknown keys never authenticate."""
    with Session(get_engine(database_url)) as session:
        assert apikeys.authenticate(session, presented) is None
        assert apikeys.authenticate(session, apikeys.generate_key()) is None


def test_revoked_and_expired_keys_are_refused(database_url: str, workspace: str) -> None:
    """Revocation and expiry take effect at once."""
    with session_scope(database_url) as session:
        revoked, revoked_plain = apikeys.create_api_key(session, workspace, ["read:email"])
        _, expired_plain = apikeys.create_api_key(
            session, workspace, ["read:email"], expires_at=utcnow() - timedelta(seconds=1)
        )
        _, future_plain = apikeys.create_api_key(
            session, workspace, ["read:email"], expires_at=utcnow() + timedelta(days=1)
        )
        assert apikeys.revoke_api_key(session, revoked.id)
    with Session(get_engine(database_url)) as session:
        assert apikeys.authenticate(session, revoked_plain) is None
        assert apikeys.authenticate(session, expired_plain) is None
        assert apikeys.authenticate(session, future_plain) is not None


def test_unknown_scopes_are_rejected(database_url: str, workspace: str) -> None:
    """Only documented scopes can be granted."""
    with session_scope(database_url) as session, pytest.raises(ValueError, match="admin"):
        apikeys.create_api_key(session, workspace, ["admin"])
