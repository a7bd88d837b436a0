"""message listing order: the workspace on each row; on SQLite, rowids in date order

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 06:00:00

The messages API lists a workspace newest first across all its mailboxes. 0007's
per-mailbox listing index made that a sort of every message of the workspace, and on SQLite a
full-text search a sort of every match. Here:
- both databases: the workspace id on the row (copied from its mailbox, which never moves)
  and an index (workspace_id, date, public_id), one walk in listing order;
- SQLite: each message's rowid becomes its listing position (mailsync/core/search/rowkeys.py),
  and the FTS5 table becomes contentless with two more columns, the workspace's token and the
  labels' tokens (each with its workspace in it), so a search is one FTS5 walk in rowid
  order, stopped by its LIMIT.
Columns are added in place (a table copy on SQLite would drop the FTS triggers).
"""

import sqlalchemy as sa
from alembic import op

from mailsync.core.search import rowkeys
from mailsync.db.migrations import revisions

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TEXT = ("subject", "snippet", "sender", '"to"', "cc")
_COLUMNS = ", ".join((*_TEXT, "scope", "labels"))


def _values(row: str) -> str:
    # The tokens rowkeys.workspace_token / label_token build for queries: hex of UTF-8 (a
    # label's token names its workspace too: a label search is one FTS5 term).
    scope = f"'w' || hex({row}.workspace_id)"
    label = f"'l' || hex({row}.workspace_id) || 'x' || hex(lower(value))"
    labels = f"(SELECT group_concat({label}, ' ') FROM json_each({row}.labels))"
    return ", ".join((*(f"{row}.{c}" for c in _TEXT), scope, labels))


_SQLITE_FTS = [
    f"CREATE VIRTUAL TABLE message_fts USING fts5({_COLUMNS}, content='', "
    "tokenize='unicode61 remove_diacritics 0')",
    f"CREATE TRIGGER message_fts_insert AFTER INSERT ON message BEGIN "
    f"INSERT INTO message_fts(rowid, {_COLUMNS}) VALUES (new.id, {_values('new')}); END",
    f"CREATE TRIGGER message_fts_delete AFTER DELETE ON message BEGIN "
    f"INSERT INTO message_fts(message_fts, rowid, {_COLUMNS}) "
    f"VALUES ('delete', old.id, {_values('old')}); END",
    f"CREATE TRIGGER message_fts_update AFTER UPDATE OF {', '.join(_TEXT)}, labels, "
    f"workspace_id ON message BEGIN "
    f"INSERT INTO message_fts(message_fts, rowid, {_COLUMNS}) "
    f"VALUES ('delete', old.id, {_values('old')}); "
    f"INSERT INTO message_fts(rowid, {_COLUMNS}) VALUES (new.id, {_values('new')}); END",
]
_DROP_FTS = [
    *(f"DROP TRIGGER IF EXISTS message_fts_{t}" for t in ("insert", "delete", "update")),
    "DROP TABLE IF EXISTS message_fts",
]


def _renumber() -> None:
    """Every row's rowid becomes its listing position (above any old rowid: no clash)."""
    bind = op.get_bind()
    message = sa.table(
        "message",
        sa.column("id", sa.Integer),
        sa.column("public_id", sa.String),
        sa.column("generation", sa.Integer),
        sa.column("date", sa.DateTime(timezone=True)),
    )
    rows = bind.execute(
        sa.select(message.c.id, message.c.public_id, message.c.generation, message.c.date)
    ).all()
    taken: set[int] = set()
    moves = []
    for row in rows:
        rowid = next(
            c for c in rowkeys.candidates(row.date, row.public_id, row.generation) if c not in taken
        )
        taken.add(rowid)
        moves.append({"old": row.id, "new": rowid})
    for start in range(0, len(moves), 1000):
        bind.execute(
            sa.update(message)
            .where(message.c.id == sa.bindparam("old"))
            .values(id=sa.bindparam("new")),
            moves[start : start + 1000],
        )


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.add_column(
        "message",
        sa.Column("workspace_id", sa.String(length=64), nullable=False, server_default=""),
    )
    op.execute(
        "UPDATE message SET workspace_id = "
        "(SELECT mailbox.workspace_id FROM mailbox WHERE mailbox.id = message.mailbox_id)"
    )
    if sqlite:
        for statement in _DROP_FTS:
            op.execute(statement)
        _renumber()
        for statement in _SQLITE_FTS:
            op.execute(statement)
        op.execute(
            f"INSERT INTO message_fts(rowid, {_COLUMNS}) "
            f"SELECT message.id, {_values('message')} FROM message"
        )
    else:
        op.alter_column("message", "workspace_id", server_default=None)
    op.create_index(
        "ix_message_workspace_listing", "message", ["workspace_id", "date", "public_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_message_workspace_listing", table_name="message")
    if op.get_bind().dialect.name == "sqlite":
        for statement in _DROP_FTS:
            op.execute(statement)
        revision_0007 = revisions.load("0007_message_search.py")
        for statement in revision_0007._SQLITE:  # 0007's FTS5 table, rebuilt from rows
            op.execute(statement)
    op.drop_column("message", "workspace_id")  # in place, as it was added
