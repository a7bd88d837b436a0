"""message search: stable public ids, the listing index, full text (FTS5 / tsvector + GIN)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 20:00:00

SQLite: an external-content FTS5 table over the message's text columns, kept in step by
triggers, so every index write (upsert, remove, switch, discard) updates it in its own
transaction. PostgreSQL: a generated tsvector column with a GIN index, in step by definition.
Both split text into runs of letters and digits (mailsync/core/search/query.py does the same
to a query). Existing rows get their public ids and their full-text entries here.
"""

import sqlalchemy as sa
from alembic import op

from mailsync.core.search.ids import message_id

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TEXT = ("subject", "snippet", "sender", '"to"', "cc")
_FTS_COLUMNS = ", ".join(_TEXT)
_OLD = ", ".join(f"old.{c}" for c in _TEXT)
_NEW = ", ".join(f"new.{c}" for c in _TEXT)
_SQLITE = [
    f"CREATE VIRTUAL TABLE message_fts USING fts5({_FTS_COLUMNS}, content='message', "
    "content_rowid='id', tokenize='unicode61 remove_diacritics 0')",
    f"CREATE TRIGGER message_fts_insert AFTER INSERT ON message BEGIN "
    f"INSERT INTO message_fts(rowid, {_FTS_COLUMNS}) VALUES (new.id, {_NEW}); END",
    f"CREATE TRIGGER message_fts_delete AFTER DELETE ON message BEGIN "
    f"INSERT INTO message_fts(message_fts, rowid, {_FTS_COLUMNS}) "
    f"VALUES ('delete', old.id, {_OLD}); END",
    f"CREATE TRIGGER message_fts_update AFTER UPDATE OF {_FTS_COLUMNS} ON message BEGIN "
    f"INSERT INTO message_fts(message_fts, rowid, {_FTS_COLUMNS}) "
    f"VALUES ('delete', old.id, {_OLD}); "
    f"INSERT INTO message_fts(rowid, {_FTS_COLUMNS}) VALUES (new.id, {_NEW}); END",
    "INSERT INTO message_fts(message_fts) VALUES ('rebuild')",
]
_PG_TEXT = " || ' ' || ".join(
    f"coalesce({c}, '')" if c in ("subject", "snippet", "sender") else f"{c}::text" for c in _TEXT
)
_POSTGRES = [
    "ALTER TABLE message ADD COLUMN search tsvector GENERATED ALWAYS AS "
    f"(to_tsvector('simple', regexp_replace({_PG_TEXT}, '[^[:alnum:]]+', ' ', 'g'))) STORED",
    "CREATE INDEX ix_message_search ON message USING gin (search)",
]


def _backfill_public_ids() -> None:
    bind = op.get_bind()
    message = sa.table(
        "message",
        sa.column("id", sa.Integer),
        sa.column("mailbox_id", sa.String),
        sa.column("provider_message_id", sa.String),
        sa.column("public_id", sa.String),
    )
    last = 0
    while True:
        rows = bind.execute(
            sa.select(message.c.id, message.c.mailbox_id, message.c.provider_message_id)
            .where(message.c.id > last)
            .order_by(message.c.id)
            .limit(1000)
        ).all()
        if not rows:
            return
        bind.execute(
            sa.update(message)
            .where(message.c.id == sa.bindparam("row_id"))
            .values(public_id=sa.bindparam("new_id")),
            [
                {"row_id": r.id, "new_id": message_id(r.mailbox_id, r.provider_message_id)}
                for r in rows
            ],
        )
        last = rows[-1].id


def upgrade() -> None:
    with op.batch_alter_table("message") as batch_op:
        batch_op.add_column(sa.Column("public_id", sa.String(length=40), nullable=True))
    _backfill_public_ids()
    with op.batch_alter_table("message") as batch_op:
        batch_op.alter_column("public_id", existing_type=sa.String(length=40), nullable=False)
    op.create_index("ix_message_public_id", "message", ["public_id"])
    # The listing's order within a mailbox's live generation (keyset pages).
    op.create_index(
        "ix_message_listing", "message", ["mailbox_id", "generation", "date", "public_id"]
    )
    for statement in _SQLITE if op.get_bind().dialect.name == "sqlite" else _POSTGRES:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS message_fts_{trigger}")
        op.execute("DROP TABLE IF EXISTS message_fts")
    else:
        op.drop_index("ix_message_search", table_name="message")
        op.drop_column("message", "search")
    op.drop_index("ix_message_listing", table_name="message")
    op.drop_index("ix_message_public_id", table_name="message")
    with op.batch_alter_table("message") as batch_op:
        batch_op.drop_column("public_id")
