"""SQLite searches with words or a label: one FTS5 walk in rowid (= listing) order.

The FTS5 table (migration 0008) holds each message's words, its workspace's token and its
labels' tokens, under rowids that are listing positions (rowkeys.py). A search asks FTS5
for the workspace's rows holding every word and the label, in rowid order (newest first),
within the rowid range its dates and its cursor allow; each candidate is joined to its row
for the other filters, and the LIMIT stops the walk. A common word costs what a rare one does.

Rowids order messages by the second of their date only, so the rows of the last second
reached are all fetched and the page is put in the exact listing order here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlmodel import Session

from mailsync.core.search import query as language
from mailsync.core.search import rowkeys
from mailsync.db.tables import as_utc

FTS = sa.table("message_fts", sa.column("rowid", sa.Integer))
_fts = FTS


class _CrossJoin(sa.Join):
    """SQLite's CROSS JOIN: its left side is always the outer loop. Left to itself the
    planner may walk the workspace's rows by an index and probe FTS5 for each (~20 us a
    probe, a million of them), where one FTS5 walk in rowid order was meant."""

    inherit_cache = True


@compiles(_CrossJoin)
def _cross_join(join: _CrossJoin, compiler: SQLCompiler, **kw: Any) -> str:
    kw["asfrom"] = True
    assert join.onclause is not None
    return (
        f"{compiler.process(join.left, **kw)} CROSS JOIN {compiler.process(join.right, **kw)}"
        f" ON {compiler.process(join.onclause, **kw)}"
    )


def rows_of_matches(message: sa.Table, mailbox: sa.Table) -> sa.FromClause:
    """What a walk's `matching` selects from: FTS5, then each match's row and mailbox."""
    rows = _CrossJoin(FTS, message, message.c.id == FTS.c.rowid)
    return _CrossJoin(rows, mailbox, mailbox.c.id == message.c.mailbox_id)


_TEXT_COLUMNS = "{subject snippet sender to cc}"
_EPOCH = datetime.min.replace(tzinfo=UTC)


def expression(workspace_id: str, terms: list[language.Term], label: str | None) -> str:
    """The MATCH text: the workspace's label token (or, without a label, its own token),
    then each term in the text columns (tokens are letters and digits: nothing in them can
    end a quoted string)."""
    if label is not None:
        parts = [f'labels : "{rowkeys.label_token(workspace_id, label)}"']
    else:
        parts = [f'scope : "{rowkeys.workspace_token(workspace_id)}"']
    parts += [f"{_TEXT_COLUMNS} : {language.to_fts5([term])}" for term in terms]
    return " AND ".join(parts)


def _order(row: Any) -> tuple[int, datetime, str]:
    return rowkeys.second_of_rowid(row.id), as_utc(row.date) or _EPOCH, row.public_id


def walk(
    session: Session,
    matching: sa.Select[Any],
    match: str,
    *,
    after: datetime | None,
    before: datetime | None,
    position_date: datetime | None,
    resuming: bool,
    wanted: int,
) -> list[Any]:
    """The first `wanted` rows of `matching` (selected from FTS joined to the rows, every
    filter and the cursor's condition applied) among FTS5's `match`, in listing order.
    `after`, `before` and the cursor's date only narrow the rowid range; `matching` decides
    exactly."""
    # Newest first is ascending rowids: `before` and the cursor bound where the walk starts,
    # `after` where it ends (each to the whole second; `matching` decides within it).
    start: int | None = None
    end: int | None = None
    if before is not None:
        start = rowkeys.rowids_of(rowkeys.second_of(before))[0]
    if resuming:
        cursor_start = rowkeys.rowids_of(rowkeys.second_of(position_date))[0]
        start = cursor_start if start is None else max(start, cursor_start)
    if after is not None:
        end = rowkeys.rowids_of(rowkeys.second_of(after))[1]
    statement = matching.where(sa.text("message_fts MATCH :match").bindparams(match=match))
    if start is not None:
        statement = statement.where(_fts.c.rowid >= start)
    if end is not None:
        statement = statement.where(_fts.c.rowid < end)
    statement = statement.order_by(_fts.c.rowid)
    rows = list(session.connection().execute(statement.limit(wanted)).all())
    if len(rows) == wanted:
        # The rest of the last second reached: its rows have no order among their rowids.
        last = rows[-1].id
        _, second_end = rowkeys.rowids_of(rowkeys.second_of_rowid(last))
        rest = statement.where(_fts.c.rowid > last, _fts.c.rowid < second_end)
        rows += session.connection().execute(rest).all()
    rows.sort(key=_order, reverse=True)
    return rows[:wanted]
