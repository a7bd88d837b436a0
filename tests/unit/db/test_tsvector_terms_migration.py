"""Migration 0014 (PostgreSQL's tsvector gains week and label terms) up and down on rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session

from mailsync import db
from mailsync.core import workspaces
from mailsync.core.search import postgres_text, store
from mailsync.core.sync import index
from mailsync.db.tables import Mailbox
from mailsync.providers.base import MessageRecord
from tests.support.databases import migrate, migrated_database

_WHEN = datetime(2026, 11, 1, 8, 30, tzinfo=UTC)
_TERMS = sa.text(
    "SELECT count(*) FROM message WHERE search @@ (quote_literal(message_label_term('w', "
    "'inbox'))::tsquery && quote_literal(message_week_term('w', :week))::tsquery)"
)


def _terms(url: str) -> list[str]:
    """The lexemes with a ':' (no word has one) in the message's tsvector."""
    with db.get_engine(url).connect() as connection:
        lexemes = connection.execute(
            sa.text("SELECT unnest(tsvector_to_array(search)) FROM message")
        )
        return sorted(lexeme for lexeme in lexemes.scalars() if ":" in lexeme)


def test_rows_written_before_the_terms_get_them_and_lose_them_again(tmp_path: Path) -> None:
    """A message written at 0013 gets its week's and its label's terms from the upgrade
    (found by them, and by the search), keeps its words through the downgrade, which takes
    the terms and their functions away."""
    with migrated_database("postgresql", tmp_path) as url:
        migrate(url, "downgrade", "0013")
        with db.session_scope(url) as session:
            workspaces.create_workspace(session, "w")
            mailbox = Mailbox(
                workspace_id="w", provider="gmail", address="a@x", credentials_encrypted="-"
            )
            session.add(mailbox)
            session.flush()
            record = MessageRecord(provider_message_id="p", thread_id=None, sender=None, to=[],
                                   subject="quarterly report", snippet="", date=_WHEN,
                                   labels=["INBOX"], size=1)  # fmt: skip
            index.upsert(session, mailbox.id, [record], 0)
        assert _terms(url) == []
        migrate(url, "upgrade", "0014")
        assert len(_terms(url)) == 2
        week = postgres_text.week_of(_WHEN)
        with db.get_engine(url).connect() as connection:
            assert connection.execute(_TERMS, {"week": week}).scalar_one() == 1
        with Session(db.get_engine(url)) as session:
            found = store.search(session, "w", store.Filters(q="report", label="inbox"))
            assert [m.subject for m in found.messages] == ["quarterly report"]
        migrate(url, "downgrade", "0013")
        assert _terms(url) == []
        with db.get_engine(url).connect() as connection:
            functions = connection.execute(
                sa.text("SELECT count(*) FROM pg_proc WHERE proname LIKE 'message\\_%'")
            ).scalar_one()
            assert functions == 0
            words = sa.text("SELECT count(*) FROM message WHERE search @@ 'quarterly'::tsquery")
            assert connection.execute(words).scalar_one() == 1
        db.dispose_engines()
