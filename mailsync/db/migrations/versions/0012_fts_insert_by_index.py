"""SQLite: new messages' full-text rows are written by the index, not an insert trigger

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 12:00:00

`core.search.sqlite_rows.add` writes a page's FTS5 rows in one statement, in the same
transaction as the rows (the trigger's row-by-row inserts cost about five times as much).
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TEXT = ("subject", "snippet", "sender", '"to"', "cc")
_COLUMNS = ", ".join((*_TEXT, "scope", "labels"))


def _values(row: str) -> str:  # migration 0008's, frozen here for the downgrade
    scope = f"'w' || hex({row}.workspace_id)"
    label = f"'l' || hex({row}.workspace_id) || 'x' || hex(lower(value))"
    labels = f"(SELECT group_concat({label}, ' ') FROM json_each({row}.labels))"
    return ", ".join((*(f"{row}.{c}" for c in _TEXT), scope, labels))


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS message_fts_insert")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER message_fts_insert AFTER INSERT ON message BEGIN "
            f"INSERT INTO message_fts(rowid, {_COLUMNS}) VALUES (new.id, {_values('new')}); END"
        )
