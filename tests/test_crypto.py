"""Credentials at rest: encrypted, and unreadable with another key."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from mailsync.crypto import CredentialBox, CredentialsUnreadableError
from mailsync.settings import Settings


def test_round_trip_hides_plaintext() -> None:
    """Sealed credentials contain no plaintext and open to the same document."""
    box = CredentialBox(Fernet.generate_key())
    secret = {"refresh_token": "1//very-secret-refresh-token", "client_secret": "shh"}
    sealed = box.seal(secret)
    assert "very-secret" not in sealed and "shh" not in sealed
    assert box.open(sealed) == secret


def test_wrong_key_fails_without_leaking() -> None:
    """Decrypting with another key raises a clear error that carries no ciphertext."""
    sealed = CredentialBox(Fernet.generate_key()).seal({"refresh_token": "x"})
    with pytest.raises(CredentialsUnreadableError) as info:
        CredentialBox(Fernet.generate_key()).open(sealed)
    assert sealed not in str(info.value)


def test_key_generated_once_with_private_permissions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The encryption key is created on first use, mode 0600, and then reused."""
    settings = Settings(data_dir=tmp_path)
    first = settings.fernet_key()
    assert (tmp_path / "encryption.key").stat().st_mode & 0o777 == 0o600
    assert Settings(data_dir=tmp_path).fernet_key() == first
