"""SQLite: the full-text table keeps no column sizes and merges its segments 16 at a time

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 15:00:00

What a full sync pays for search, per page it writes: FTS5 kept a row of column sizes per
message (`message_fts_docsize`), read only by ranking functions, which the listing never
uses (it orders by rowid); and it merged its segments whenever four of a level piled up,
rewriting the index's terms more often than queries need. `columnsize=0` drops the sizes;
`automerge` 16 merges less often (a query reads at most a few more segments). The table is
rebuilt from the message rows (contentless: it cannot rebuild itself), with 0008's values.
"""

from alembic import op

from mailsync.db.migrations import revisions

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_TOKENIZE = "tokenize='unicode61 remove_diacritics 0'"
AUTOMERGE = 16


def _rebuild(options: str) -> None:
    listing = revisions.load("0008_message_workspace_listing.py")
    columns = listing._COLUMNS
    # The delete and update triggers name the table, not bind to it: they survive the swap.
    op.execute("DROP TABLE message_fts")
    op.execute(
        f"CREATE VIRTUAL TABLE message_fts USING fts5({columns}, content=''{options}, {_TOKENIZE})"
    )
    op.execute(
        f"INSERT INTO message_fts(rowid, {columns}) "
        f"SELECT message.id, {listing._values('message')} FROM message ORDER BY message.id"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(", columnsize=0")
        op.execute(f"INSERT INTO message_fts(message_fts, rank) VALUES ('automerge', {AUTOMERGE})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild("")
