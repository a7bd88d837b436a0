"""Alembic environment: runs on the connection mailsync.db.upgrade hands over."""

from alembic import context
from sqlmodel import SQLModel

import mailsync.db.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

# The full-text index (migrations 0007, 0014) is the database's own, outside the models:
# SQLite's FTS5 table and its shadow tables, PostgreSQL's generated tsvector column and its
# GIN indexes (of the words before 0014, of the words by week since).
FULL_TEXT = ("message_fts", "search", "ix_message_search", "ix_message_week_terms")


def include_object(obj, name, kind, reflected, compare_to):  # type: ignore[no-untyped-def]
    return not (reflected and name is not None and name.startswith(FULL_TEXT))


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    include_object=include_object,
)
with context.begin_transaction():
    context.run_migrations()
