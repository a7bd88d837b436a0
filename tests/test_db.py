"""Schema management: Alembic creates and upgrades the schema on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from mailsync import db


def test_upgrade_creates_every_table_and_is_idempotent(database_url: str) -> None:
    """Upgrading twice is harmless and leaves all tables at the head revision."""
    db.upgrade(database_url)
    inspector = sa.inspect(db.get_engine(database_url))
    tables = {"workspace", "apikey", "mailbox", "message", "syncjob", "idempotencyrecord"}
    assert tables | {"alembic_version"} <= set(inspector.get_table_names())
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("message")}
    assert ("mailbox_id", "provider_message_id") in uniques
