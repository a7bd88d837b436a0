"""Re-encrypt every stored secret with the primary encryption key.

Rotation: set MAILSYNC_ENCRYPTION_KEY="new,old" on every process (API, workers) so the new
key encrypts and both decrypt, run `mailsync encryption rotate`, then drop the old key.

Sealed columns: mailbox credentials and auth state (provider token caches), webhook signing
secrets (current and previous). Each value is replaced with compare-and-set (`WHERE column =
the value read`), so a value a sync or a secret rotation wrote meanwhile is not overwritten
with an older one: it is read again and re-encrypted. Each value is committed on its own, so
no long write lock stalls running syncs; an interrupted run is safe to repeat, because every
key of the list still decrypts everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlmodel import Session

from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox, MailboxPush, WebhookEndpoint
from mailsync.errors import CredentialsUnreadableError

SEALED_COLUMNS: tuple[tuple[sa.Table, tuple[str, ...]], ...] = (
    (Mailbox.__table__, ("credentials_encrypted", "auth_state_encrypted")),  # type: ignore[attr-defined]
    (WebhookEndpoint.__table__, ("secret_encrypted", "previous_secret_encrypted")),  # type: ignore[attr-defined]
    (MailboxPush.__table__, ("client_state_encrypted",)),  # type: ignore[attr-defined]
)
_RETRIES = 5


@dataclass
class RotationReport:
    reencrypted: dict[str, int] = field(default_factory=dict)  # "table.column" -> values

    @property
    def total(self) -> int:
        return sum(self.reencrypted.values())


def reencrypt_all(session: Session, box: CredentialBox) -> RotationReport:
    """Re-encrypt every sealed value with `box`'s primary key, committing each one.

    Raises CredentialsUnreadableError (naming the row, never a value) when no configured key
    decrypts a value: add the key it was sealed with to the list and run again.
    """
    report = RotationReport()
    for table, columns in SEALED_COLUMNS:
        for name in columns:
            column, key = table.c[name], _row_key(table)
            done = 0
            # An empty value is no secret: a disconnected mailbox's deleted credentials.
            query = sa.select(key, column).where(column.is_not(None), column != "")
            rows = session.connection().execute(query).all()
            session.commit()
            for row_id, token in rows:
                conn = session.connection()
                for _ in range(_RETRIES):
                    if token is None:
                        break
                    try:
                        new = box.rotate(token)
                    except CredentialsUnreadableError as exc:
                        raise CredentialsUnreadableError(
                            f"{table.name}.{name} of {row_id} cannot be decrypted with any "
                            "configured encryption key"
                        ) from exc
                    update = sa.update(table).where(key == row_id, column == token)
                    if conn.execute(update.values({name: new})).rowcount:
                        done += 1
                        break
                    token = conn.execute(sa.select(column).where(key == row_id)).scalar()
                else:
                    raise RuntimeError(f"{table.name}.{name} of {row_id} kept changing")
                session.commit()
            report.reencrypted[f"{table.name}.{name}"] = done
    return report


def unrotated(session: Session, box: CredentialBox) -> list[str]:
    """Sealed values the primary key alone cannot open ("table.column:id"): after a complete
    rotation, none, and the old key can be removed."""
    left: list[str] = []
    conn = session.connection()
    for table, columns in SEALED_COLUMNS:
        for name in columns:
            column = table.c[name]
            for row_id, token in conn.execute(sa.select(_row_key(table), column)):
                if token and not box.opens_with_primary(token):
                    left.append(f"{table.name}.{name}:{row_id}")
    return left


def _row_key(table: sa.Table) -> sa.Column[str]:
    """The one-column primary key a sealed value's row is named by (id, or mailbox_id)."""
    (column,) = table.primary_key.columns
    return column
