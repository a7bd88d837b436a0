"""Migration 0014 (PostgreSQL's full text indexed by week) up and down on a written row."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session

from mailsync import db
from mailsync.core.search import postgres_text, store
from mailsync.core.search import query as language
from mailsync.core.sync import index
from mailsync.providers.base import MessageRecord
from tests.support.databases import migrate, migrated_database
from tests.support.mailboxes import bare_mailbox

_WHEN = datetime(2026, 11, 1, 8, 30, tzinfo=UTC)
_IN_WEEK = sa.text(
    "SELECT count(*) FROM message WHERE message_week_terms(workspace_id, date, search, labels)"
    " @@ CAST(:terms AS tsquery)"
)


def _indexes(url: str) -> set[str]:
    with db.get_engine(url).connect() as connection:
        names = sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'message'")
        return set(connection.execute(names).scalars())


def _found(url: str, week: int, q: str | None, label: str | None) -> int:
    with db.get_engine(url).connect() as connection:
        terms = postgres_text.WeekTerms.read(connection, "w", language.parse(q or ""), label)
        return int(connection.execute(_IN_WEEK, {"terms": terms.tsquery(str(week))}).scalar_one())


def test_rows_written_before_are_indexed_by_week_and_the_downgrade_restores_0007(
    tmp_path: Path,
) -> None:
    """A message written at 0013 is found after the upgrade by its week's terms (a word, a
    phrase's words, its label in any case, together) and by no other week's, and by the
    search; the downgrade puts 0007's GIN index of the words back and takes the week index
    and its functions away."""
    with migrated_database("postgresql", tmp_path) as url:
        migrate(url, "downgrade", "0013")
        mailbox_id = bare_mailbox(url, "w")
        with db.session_scope(url) as session:
            record = MessageRecord(provider_message_id="p", thread_id=None, sender=None, to=[],
                                   subject="quarterly report", snippet="", date=_WHEN,
                                   labels=["INBOX"], size=1)  # fmt: skip
            index.upsert(session, mailbox_id, [record], 0)
        migrate(url, "upgrade", "0014")
        assert "ix_message_search" not in _indexes(url)
        week = postgres_text.week_of(_WHEN)
        assert _found(url, week, "report", None) == 1
        assert _found(url, week, '"quarterly report"', "inbox") == 1
        assert _found(url, week, None, "Inbox") == 1
        assert _found(url, week, "report", "sent") == 0
        assert _found(url, week, "invoice", None) == 0
        assert _found(url, week + 1, "report", None) == _found(url, week - 1, None, "inbox") == 0
        with Session(db.get_engine(url)) as session:
            found = store.search(session, "w", store.Filters(q="report", label="inbox"))
            assert [m.subject for m in found.messages] == ["quarterly report"]
        migrate(url, "downgrade", "0013")
        assert "ix_message_search" in _indexes(url)
        with db.get_engine(url).connect() as connection:
            functions = connection.execute(
                sa.text("SELECT count(*) FROM pg_proc WHERE proname LIKE 'message\\_%'")
            ).scalar_one()
            assert functions == 0
        db.dispose_engines()
