"""Encrypts provider credentials at rest (Fernet: AES-128-CBC + HMAC-SHA256).

The key may be a comma-separated list (MAILSYNC_ENCRYPTION_KEY="new,old"): the first key
encrypts, every key decrypts, so the key can be rotated without downtime
(`mailsync encryption rotate`, mailsync/db/keyrotation.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from mailsync.errors import CredentialsUnreadableError


def parse_keys(keys: bytes | str | Sequence[bytes | str]) -> list[bytes]:
    """The Fernet keys of a comma-separated list (or a sequence), first = primary."""
    if isinstance(keys, bytes | str):
        raw = keys.encode() if isinstance(keys, str) else keys
        items: Sequence[bytes | str] = raw.split(b",")
    else:
        items = keys
    parsed = [(k.encode() if isinstance(k, str) else k).strip() for k in items]
    parsed = [k for k in parsed if k]
    if not parsed:
        raise ValueError("no encryption key given")
    return parsed


class CredentialBox:
    def __init__(self, key: bytes | str | Sequence[bytes | str]) -> None:
        fernets = [Fernet(k) for k in parse_keys(key)]
        self._primary = fernets[0]
        self._fernet = MultiFernet(fernets)

    def seal(self, credentials: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(credentials).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise CredentialsUnreadableError(
                "stored credentials cannot be decrypted with the configured encryption key"
            ) from exc
        return data

    def rotate(self, token: str) -> str:
        """The same sealed document, encrypted with the primary key (any key may open it)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise CredentialsUnreadableError(
                "stored credentials cannot be decrypted with any configured encryption key"
            ) from exc

    def opens_with_primary(self, token: str) -> bool:
        """Whether the primary key alone decrypts the token (it no longer needs an old key)."""
        try:
            self._primary.decrypt(token.encode())
        except InvalidToken:
            return False
        return True
