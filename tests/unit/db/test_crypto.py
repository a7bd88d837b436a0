"""Credentials at rest: encrypted, and unreadable with another key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from mailsync import db
from mailsync.db.crypto import CredentialBox
from mailsync.errors import ConfigurationError, CredentialsUnreadableError
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


def test_concurrent_first_starts_agree_on_one_complete_key(tmp_path: Path) -> None:
    """Twenty processes' first use at once (a `mailsync up` and its workers, two API
    replicas): every one gets the same non-empty key, and one key file is left, mode 0600
    whatever the umask, in a data directory only its owner can enter."""
    data = tmp_path / "data"
    script = (
        "import os, sys; os.umask(0); from mailsync.settings import Settings; "
        "sys.stdout.write(Settings(data_dir=sys.argv[1]).fernet_key().decode())"
    )
    starts = [
        subprocess.Popen([sys.executable, "-c", script, str(data)], stdout=subprocess.PIPE)
        for _ in range(20)
    ]
    keys = {start.communicate(timeout=60)[0] for start in starts}
    assert all(start.returncode == 0 for start in starts)
    assert len(keys) == 1 and keys != {b""}
    assert keys == {(data / "encryption.key").read_bytes().strip()}
    assert [p.name for p in data.iterdir()] == ["encryption.key"]  # no temporary file left
    assert (data / "encryption.key").stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o077 == 0


def test_an_unreadable_key_file_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    """A key file that exists but cannot be read (here a directory in its place, which even
    root cannot read as a file) stops with a clear error; nothing new is written."""
    (tmp_path / "encryption.key").mkdir()
    with pytest.raises(ConfigurationError, match="cannot be read"):
        Settings(data_dir=tmp_path).fernet_key()
    assert [p.name for p in tmp_path.iterdir()] == ["encryption.key"]
    assert (tmp_path / "encryption.key").is_dir()


def test_an_empty_key_file_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    """An empty key file (a crash of a version that wrote it in place) stops with a clear
    error, and stays as it is."""
    (tmp_path / "encryption.key").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="empty"):
        Settings(data_dir=tmp_path).fernet_key()
    assert (tmp_path / "encryption.key").read_bytes() == b""


def test_the_sqlite_database_is_private(tmp_path: Path) -> None:
    """The app's SQLite file (mail, encrypted credentials) and its WAL are created mode 0600,
    whatever the umask."""
    old = os.umask(0)
    try:
        db.upgrade(f"sqlite:///{tmp_path / 'app' / 'mailsync.db'}")
    finally:
        os.umask(old)
    files = sorted((tmp_path / "app").iterdir())
    assert files and all(f.stat().st_mode & 0o077 == 0 for f in files), [
        (f.name, oct(f.stat().st_mode)) for f in files
    ]
    assert (tmp_path / "app").stat().st_mode & 0o077 == 0
