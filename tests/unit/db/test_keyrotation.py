"""Encryption-key rotation: a key list (first encrypts, all decrypt), `reencrypt_all`, and
`mailsync encryption rotate`. Each test uses a database of its own (a rotation touches every
row, and the session's shared databases hold other tests' secrets under the suite's key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlmodel import Session, select
from typer.testing import CliRunner

from mailsync import db
from mailsync.cli import app
from mailsync.core import workspaces
from mailsync.db.crypto import CredentialBox
from mailsync.db.keyrotation import reencrypt_all, unrotated
from mailsync.db.tables import Mailbox, MailboxPush, WebhookEndpoint
from mailsync.errors import CredentialsUnreadableError
from mailsync.settings import get_settings
from mailsync.webhooks import store

OLD, NEW = Fernet.generate_key(), Fernet.generate_key()
CREDENTIALS = {
    "type": "oauth",
    "client_id": "client.apps.googleusercontent.com",
    "client_secret": "client-secret-for-rotation",
    "refresh_token": "1//refresh-token-for-rotation",
}
AUTH_STATE = {"state": '{"v": 1, "token": "ya29.access-token-for-rotation"}'}
CLIENT_STATE = {"client_state": "graph-client-state-for-rotation"}


def fresh_database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'rotation.db'}"
    db.upgrade(url)
    return url


def seed(url: str, box: CredentialBox) -> tuple[str, str, list[str]]:
    """A mailbox with credentials and auth state, a webhook endpoint rotated once (so it has
    a previous secret), all sealed with `box`; returns their ids and the endpoint's secrets."""
    with db.session_scope(url) as session:
        workspaces.create_workspace(session, "ws-rot")
        mailbox, _ = workspaces.connect_mailbox(
            session, box, "ws-rot", "gmail", "ada@rot.example", CREDENTIALS
        )
        mailbox.auth_state_encrypted = box.seal(AUTH_STATE)
        session.add(
            MailboxPush(
                mailbox_id=mailbox.id,
                provider="microsoft",
                client_state_encrypted=box.seal(CLIENT_STATE),
            )
        )
        endpoint, first = store.create_endpoint(session, box, "ws-rot", "https://h.example/", None)
        second = store.rotate_secret(session, box, endpoint, 3600)
        return mailbox.id, endpoint.id, [second, first]


def read_all(url: str, box: CredentialBox, mailbox_id: str, endpoint_id: str) -> list[Any]:
    with Session(db.get_engine(url)) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        push = session.get(MailboxPush, mailbox_id)
        assert mailbox is not None and endpoint is not None and mailbox.auth_state_encrypted
        assert push is not None and push.client_state_encrypted
        return [
            box.open(mailbox.credentials_encrypted),
            box.open(mailbox.auth_state_encrypted),
            store.signing_secrets(box, endpoint),
            box.open(push.client_state_encrypted),
        ]


def test_a_key_list_encrypts_with_the_first_and_decrypts_with_any() -> None:
    """MAILSYNC_ENCRYPTION_KEY="new,old": new values need only the new key; values sealed
    with the old key still open; a key outside the list opens nothing."""
    both = CredentialBox(NEW + b", " + OLD)
    assert CredentialBox(NEW).open(both.seal({"a": 1})) == {"a": 1}
    legacy = CredentialBox(OLD).seal({"b": 2})
    assert both.open(legacy) == {"b": 2} and not both.opens_with_primary(legacy)
    assert CredentialBox(NEW).open(both.rotate(legacy)) == {"b": 2}
    with pytest.raises(CredentialsUnreadableError):
        CredentialBox(Fernet.generate_key()).open(legacy)
    with pytest.raises(ValueError):
        CredentialBox(b" , ")


def test_reencrypt_all_moves_every_secret_to_the_new_key(tmp_path: Path) -> None:
    """After `reencrypt_all` with "new,old", the new key alone opens every sealed column
    (credentials, auth state, current and previous webhook secret, Graph clientState) to the
    same plaintext, the old key alone opens none, and `unrotated` reports nothing left."""
    url = fresh_database(tmp_path)
    mailbox_id, endpoint_id, secrets = seed(url, CredentialBox(OLD))
    with Session(db.get_engine(url)) as session:
        report = reencrypt_all(session, CredentialBox([NEW, OLD]))
    assert report.reencrypted == {
        "mailbox.credentials_encrypted": 1,
        "mailbox.auth_state_encrypted": 1,
        "webhookendpoint.secret_encrypted": 1,
        "webhookendpoint.previous_secret_encrypted": 1,
        "mailboxpush.client_state_encrypted": 1,
    }
    assert read_all(url, CredentialBox(NEW), mailbox_id, endpoint_id) == [
        CREDENTIALS, AUTH_STATE, secrets, CLIENT_STATE,
    ]  # fmt: skip
    with pytest.raises(CredentialsUnreadableError):
        read_all(url, CredentialBox(OLD), mailbox_id, endpoint_id)
    with Session(db.get_engine(url)) as session:
        assert unrotated(session, CredentialBox(NEW)) == []


def test_a_value_written_during_the_rotation_is_not_overwritten(tmp_path: Path) -> None:
    """Compare-and-set: when a sync stores new auth state between the rotation's read and
    its write, the rotation keeps the newer value (re-encrypted), not the older one."""
    url = fresh_database(tmp_path)
    mailbox_id, endpoint_id, _ = seed(url, CredentialBox(OLD))
    newer = {"state": '{"v": 1, "token": "ya29.newer-token"}'}

    class RacingBox(CredentialBox):
        raced = False

        def rotate(self, token: str) -> str:
            if not self.raced and self.open(token) == AUTH_STATE:
                self.raced = True  # a sync (already on "new,old") writes meanwhile
                with db.session_scope(url) as other:
                    row = other.get(Mailbox, mailbox_id)
                    assert row is not None
                    row.auth_state_encrypted = CredentialBox(NEW).seal(newer)
            return super().rotate(token)

    with Session(db.get_engine(url)) as session:
        racing = RacingBox([NEW, OLD])
        reencrypt_all(session, racing)
    assert racing.raced
    assert read_all(url, CredentialBox(NEW), mailbox_id, endpoint_id)[1] == newer


def test_cli_rotate_and_a_value_no_key_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mailsync encryption rotate` re-encrypts and reports per column; a value no configured
    key opens makes it fail with exit 1, naming the row but never printing a value."""
    url = fresh_database(tmp_path)
    mailbox_id, endpoint_id, _ = seed(url, CredentialBox(OLD))
    monkeypatch.setenv("MAILSYNC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MAILSYNC_DATABASE_URL", url)
    monkeypatch.setenv("MAILSYNC_ENCRYPTION_KEY", f"{NEW.decode()},{OLD.decode()}")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["encryption", "rotate"])
        assert result.exit_code == 0, result.output
        assert "mailbox.credentials_encrypted: 1 re-encrypted" in result.output
        assert "done: 5 values" in result.output
        assert read_all(url, CredentialBox(NEW), mailbox_id, endpoint_id)[0] == CREDENTIALS

        stranger = CredentialBox(Fernet.generate_key()).seal(CREDENTIALS)
        with db.session_scope(url) as session:
            mailbox = session.exec(select(Mailbox)).one()
            mailbox.credentials_encrypted = stranger
        result = CliRunner().invoke(app, ["encryption", "rotate"])
        assert result.exit_code == 1
        assert f"mailbox.credentials_encrypted of {mailbox_id}" in result.output
        assert stranger not in result.output
        assert not any(value in result.output for value in CREDENTIALS.values())
    finally:
        get_settings.cache_clear()
