"""Migration 0015: its PL/pgSQL message_week_terms() gives 0014's terms exactly (the week
index 0014 built stays valid without a rebuild), and the index's pending list is short."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from mailsync import db
from mailsync.core.sync import index
from mailsync.db.migrations import revisions
from mailsync.fakes.gmail.mailbox import Mailbox as GmailFake
from mailsync.fakes.microsoft.mailbox import Mailbox as GraphFake
from mailsync.providers.base import MessageRecord
from mailsync.providers.gmail import records as gmail_records
from mailsync.providers.microsoft import records as graph_records
from tests.support.databases import migrate, migrated_database
from tests.support.mailboxes import bare_mailbox

_OLD = "message_week_terms_0014"
_SENT = datetime(2026, 11, 1, 8, 30, tzinfo=UTC)
_PENDING = sa.text("SELECT reloptions FROM pg_class WHERE relname = 'ix_message_week_terms'")
_LANGUAGE = sa.text(
    "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
    "WHERE p.proname = 'message_week_terms'"
)
# (words, labels JSON, sent): what a row can hold, edges included.
_EDGES = [
    ("", "[]", _SENT),
    ("", "null", _SENT),
    ("", None, None),
    ("quarterly report", None, _SENT),
    (None, '["INBOX"]', _SENT),
    ("quarterly report report", '"INBOX"', None),
    ("a b", '{"INBOX": 1}', _SENT),
    ("été 2026 ütf", '["Été", "ÉTÉ", "été", "INBOX", "inbox"]', _SENT),
    ("x", '["a b", "", "l:x", 7, true]', datetime(1960, 1, 1, tzinfo=UTC)),
    ("y", '["Label_7"]', datetime(1970, 1, 7, 23, 59, 59, 999999, tzinfo=UTC)),
]


def _fake_records() -> list[MessageRecord]:
    gmail = GmailFake.create("g@example.com", 3, 150)
    records = [
        gmail_records.to_record(m.resource("metadata", gmail_records.METADATA_HEADERS))
        for m in gmail.order
    ]
    graph = GraphFake("m@example.com", "tenant", 4)
    graph.seed(150, spread=True)
    for message in graph.messages.values():
        item = graph.render(message, graph_records.SELECT_FIELDS, True)
        records.append(graph_records.to_record(item, message.folder_key))
    return records


def test_0015_returns_0014s_terms_for_every_row_and_edge_with_a_short_pending_list(
    tmp_path: Path,
) -> None:
    """For the fakes' messages (both providers' words and labels) and for the edges (no words,
    labels null, not an array, repeated in other cases, non-strings, no date, before 1970),
    0015's function and 0014's return the same tsvector; the index's pending list is 256 kB; the
    downgrade puts 0014's function and the default pending list back."""
    with migrated_database("postgresql", tmp_path) as url:
        mailbox_id = bare_mailbox(url, "w")
        with db.session_scope(url) as session:
            assert index.upsert(session, mailbox_id, _fake_records(), 0).added == 300
        created = revisions.load("0014_fulltext_by_week.py")._FUNCTIONS[-1]
        compare = (
            f"SELECT count(*) FILTER (WHERE message_week_terms(w, s, t, l) IS DISTINCT FROM "
            f"{_OLD}(w, s, t, l)), count(*), sum(length(message_week_terms(w, s, t, l))) FROM "
        )
        edges = sa.text(
            compare + "(SELECT 'w' AS w, CAST(e.s AS timestamptz) AS s, "
            "to_tsvector('simple', e.t) AS t, CAST(e.l AS json) AS l FROM "
            "json_to_recordset(CAST(:edges AS json)) AS e(t text, l text, s text)) AS r"
        )
        rows = sa.text(
            compare + "(SELECT workspace_id AS w, date AS s, search AS t, labels AS l "
            "FROM message) AS r"
        )
        edge_values = [{"t": t, "l": j, "s": s and s.isoformat()} for t, j, s in _EDGES]
        with db.get_engine(url).begin() as connection:
            assert connection.execute(_LANGUAGE).scalar_one() == "plpgsql"
            assert connection.execute(_PENDING).scalar_one() == ["gin_pending_list_limit=256"]
            connection.execute(sa.text(created.replace("message_week_terms(", f"{_OLD}(", 1)))
            differing, count, terms = connection.execute(
                edges, {"edges": json.dumps(edge_values)}
            ).one()
            assert (differing, count) == (0, len(_EDGES)) and terms > 0
            differing, count, terms = connection.execute(rows).one()
            assert (differing, count) == (0, 300) and terms > 300 * 5
        migrate(url, "downgrade", "0014")
        with db.get_engine(url).connect() as connection:
            assert connection.execute(_LANGUAGE).scalar_one() == "sql"
            assert connection.execute(_PENDING).scalar_one() is None
        db.dispose_engines()
