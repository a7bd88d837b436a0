"""SQLite: new messages' full-text rows are written by the index, not an insert trigger

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 12:00:00

`core.search.sqlite_rows.add` writes a page's FTS5 rows in one statement, in the same
transaction as the rows (the trigger's row-by-row inserts cost about five times as much).
"""

from alembic import op

from mailsync.db.migrations import revisions

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS message_fts_insert")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        fts = revisions.load("0008_message_workspace_listing.py")._SQLITE_FTS
        [create] = [statement for statement in fts if "message_fts_insert" in statement]
        op.execute(create)
