"""SQLite's full-text rows for new messages, written by the index beside the message rows.

Migration 0008's triggers kept FTS5 in step row by row; for inserts that cost about five
times what one INSERT ... SELECT of a page's rows costs (BENCHMARKS.md, "Search": a full
sync's throughput), so migration 0012 dropped the insert trigger and `core.sync.index.upsert`
calls `add` in the same transaction as its insert. Deletes and updates keep their triggers.
The column values must stay those of migration 0008 (`_values`), the tokens the queries
build (rowkeys.workspace_token / label_token).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

_TEXT = ("subject", "snippet", "sender", '"to"', "cc")
COLUMNS = ", ".join((*_TEXT, "scope", "labels"))
_CHUNK = 500


def values(row: str) -> str:
    """The FTS5 columns' values for the message row aliased `row` (SQL)."""
    scope = f"'w' || hex({row}.workspace_id)"
    label = f"'l' || hex({row}.workspace_id) || 'x' || hex(lower(value))"
    labels = f"(SELECT group_concat({label}, ' ') FROM json_each({row}.labels))"
    return ", ".join((*(f"{row}.{c}" for c in _TEXT), scope, labels))


def add(session: Session, rowids: list[int]) -> None:
    """Index the messages of `rowids`, in ascending rowids: FTS5 starts a new segment
    whenever a transaction writes a rowid below the last one it wrote."""
    ordered = sorted(rowids)
    for start in range(0, len(ordered), _CHUNK):
        chunk = ordered[start : start + _CHUNK]
        statement = sa.text(
            f"INSERT INTO message_fts(rowid, {COLUMNS}) "
            f"SELECT message.id, {values('message')} FROM message "
            "WHERE message.id IN :ids ORDER BY message.id"
        ).bindparams(sa.bindparam("ids", chunk, expanding=True))
        session.connection().execute(statement)
