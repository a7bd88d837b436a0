"""Migration 0013 (SQLite's full-text table rebuilt lighter) down and up on an indexed mailbox."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session

from mailsync import db
from mailsync.core.search import store
from mailsync.core.sync import index
from mailsync.db.migrations import revisions
from mailsync.providers.base import MessageRecord
from tests.support.databases import migrate, migrated_database
from tests.support.mailboxes import bare_mailbox

_WHEN = datetime(2026, 11, 1, tzinfo=UTC)


def _subjects(url: str, q: str) -> list[str | None]:
    with Session(db.get_engine(url)) as session:
        return [m.subject for m in store.search(session, "w", store.Filters(q=q)).messages]


def _fts_tables(url: str) -> set[str]:
    with db.get_engine(url).connect() as connection:
        names = connection.execute(
            sa.text("SELECT name FROM sqlite_master WHERE name LIKE 'message_fts%'")
        ).scalars()
        return set(names)


def _automerge(url: str) -> int | None:
    with db.get_engine(url).connect() as connection:
        value = connection.execute(
            sa.text("SELECT v FROM message_fts_config WHERE k = 'automerge'")
        ).scalar()
        return None if value is None else int(value)


def test_the_rebuilt_table_finds_deletes_and_survives_a_downgrade(tmp_path: Path) -> None:
    """At head the table keeps no column sizes and merges 16 segments at a time, and finds
    what the index wrote; a message deleted at 0012 (by its delete trigger, on the table
    rebuilt by the downgrade) and one deleted at head are gone from full text, the others
    still found, through the downgrade and the upgrade again."""
    with migrated_database("sqlite", tmp_path) as url:
        migration = revisions.load("0013_fts_lighter_writes.py")
        assert "message_fts_docsize" not in _fts_tables(url)
        assert _automerge(url) == migration.AUTOMERGE
        mailbox_id = bare_mailbox(url, "w")
        with db.session_scope(url) as session:
            records = [
                MessageRecord(f"p{n}", "t", "ada@acme.com", subject=f"invoice {n}", date=_WHEN)
                for n in range(4)
            ]
            index.upsert(session, mailbox_id, records, 0)
        assert sorted(_subjects(url, "invoice")) == [f"invoice {n}" for n in range(4)]

        migrate(url, "downgrade", "0012")
        assert "message_fts_docsize" in _fts_tables(url) and _automerge(url) is None
        with db.session_scope(url) as session:
            index.remove(session, mailbox_id, ["p0"], 0)
        assert sorted(_subjects(url, "invoice")) == ["invoice 1", "invoice 2", "invoice 3"]

        migrate(url, "upgrade", "head")
        assert "message_fts_docsize" not in _fts_tables(url)
        with db.session_scope(url) as session:
            index.remove(session, mailbox_id, ["p1"], 0)
        assert sorted(_subjects(url, "invoice")) == ["invoice 2", "invoice 3"]
        assert _subjects(url, '"invoice 3"') == ["invoice 3"]
        with db.get_engine(url).begin() as connection:  # FTS5's own consistency check
            connection.execute(
                sa.text("INSERT INTO message_fts(message_fts) VALUES ('integrity-check')")
            )
        db.dispose_engines()
