"""PostgreSQL searches with words or a label: a short listing walk, then week by week.

The tsvector (migration 0014) holds each message's words, a term for its week and one for
each label, all of its workspace. A GIN bitmap neither orders nor bounds matches by date,
and the listing walk tests rows one by one, so neither alone is fast for a word that lives
only in older mail (every match fetched and sorted, or every newer row tested). A page is:
1. the listing walk over the next `walk_rows` rows of the workspace, newest first, testing
   each (a common word fills the page here);
2. then one GIN probe per week, newest first, of the words AND that week's term (and the
   label's), from the walk's end down to `after` or the workspace's oldest message: a week
   without a match costs a fraction of a millisecond, one with matches fetches only them;
3. then, as in every listing, the messages without a date.
Each step keeps the exact conditions of `matching` (cursor, filters, generation): the terms
only choose which rows are looked at. The planner is told which index each step means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mailsync.core.search import cursor as cursors
from mailsync.core.search import order
from mailsync.core.search import query as language
from mailsync.db.tables import Message, as_utc

WALK_ROWS = 500  # ~0.5 ms of row tests: more than a week probe of a rare word costs
_WEEK = timedelta(seconds=604_800)  # migration 0014's WEEK_SECONDS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_message: sa.Table = Message.__table__  # type: ignore[attr-defined]
_m = _message.c


def week_of(when: datetime) -> int:
    """The week number 0014's message_week() gives this instant (exact: no float)."""
    aware = as_utc(when)
    assert aware is not None
    return (aware - _EPOCH) // _WEEK


def _tsquery(
    workspace_id: str, terms: list[language.Term], label: str | None, week: int | None
) -> sa.TextClause:
    """`search @@` the words AND the label's term AND the week's term (each optional), the
    terms built by the same SQL functions as the column."""
    parts: list[str] = []
    values: dict[str, Any] = {}
    if terms:
        parts.append("to_tsquery('simple', :tsq_words)")
        values["tsq_words"] = language.to_tsquery(terms)
    if label is not None:
        parts.append("quote_literal(message_label_term(:tsq_ws, :tsq_label))::tsquery")
        values["tsq_label"] = label
    if week is not None:
        parts.append("quote_literal(message_week_term(:tsq_ws, :tsq_week))::tsquery")
        values["tsq_week"] = week
    if label is not None or week is not None:
        values["tsq_ws"] = workspace_id
    assert parts, "a text walk needs words, a label or a week"
    return sa.text(f"message.search @@ ({' && '.join(parts)})").bindparams(**values)


@contextmanager
def _planner(connection: Connection, *plans: str) -> Iterator[None]:
    """Plan this step's statements without the named plan kinds (`enable_<plan>` off), in
    this transaction only; the settings before are put back after."""
    names = [f"enable_{plan}" for plan in plans]
    read = sa.text("SELECT current_setting(:n)")
    before = {name: connection.execute(read, {"n": name}).scalar_one() for name in names}
    change = sa.text("SELECT set_config(:n, :v, true)")
    for name in names:
        connection.execute(change, {"n": name, "v": "off"})
    try:
        yield
    finally:
        for name, value in before.items():
            connection.execute(change, {"n": name, "v": value})


def _boundary(
    connection: Connection,
    workspace_id: str,
    position: cursors.Position | None,
    after: datetime | None,
    before: datetime | None,
    walk_rows: int,
) -> cursors.Position | None:
    """The last of the next `walk_rows` dated rows of the workspace in the date range (any
    generation, no other filter): where the listing walk stops; None if fewer are left."""
    statement = sa.select(_m.date, _m.public_id).where(
        _m.workspace_id == workspace_id, _m.date.is_not(None)
    )
    if position is not None:
        statement = statement.where(order.dated_after(position))
    if after is not None:
        statement = statement.where(_m.date >= after)
    if before is not None:
        statement = statement.where(_m.date < before)
    row = connection.execute(order.newest_first(statement, 1).offset(walk_rows - 1)).first()
    return None if row is None else cursors.Position(as_utc(row.date), row.public_id)


def _oldest_week(connection: Connection, workspace_id: str, after: datetime | None) -> int:
    if after is not None:
        return week_of(after)
    oldest = connection.execute(
        sa.select(sa.func.min(_m.date)).where(_m.workspace_id == workspace_id)
    ).scalar_one()
    assert oldest is not None  # called with a boundary row: the workspace has a dated one
    return week_of(oldest)


def walk(
    connection: Connection,
    matching: sa.Select[Any],
    workspace_id: str,
    terms: list[language.Term],
    label: str | None,
    *,
    position: cursors.Position | None,
    after: datetime | None,
    before: datetime | None,
    wanted: int,
    walk_rows: int = WALK_ROWS,
) -> list[Any]:
    """The first `wanted` rows of `matching` (every filter applied but the words) after
    `position`, with `terms` and `label`, in listing order; `after` and `before` are the
    filters' dates (UTC), which bound the walk."""

    def probe(week: int | None) -> sa.TextClause:
        return _tsquery(workspace_id, terms, label, week)

    words = probe(None)
    rows: list[Any] = []
    if position is None or position.date is not None:
        dated = matching.where(_m.date.is_not(None))
        if position is not None:
            dated = dated.where(order.dated_after(position))
        boundary = _boundary(connection, workspace_id, position, after, before, walk_rows)
        walked = dated.where(words)
        if boundary is not None:
            walked = walked.where(order.dated_up_to(boundary))
        with _planner(connection, "bitmapscan"):
            rows = list(connection.execute(order.newest_first(walked, wanted)).all())
        if boundary is not None and len(rows) < wanted:
            older = dated.where(order.dated_after(boundary))
            oldest = _oldest_week(connection, workspace_id, after)
            rows += _by_week(connection, older, boundary, oldest, wanted - len(rows), probe)
    if len(rows) < wanted:
        undated = matching.where(order.undated_after(position), words)
        undated = undated.order_by(_m.public_id.desc()).limit(wanted - len(rows))
        rows += connection.execute(undated).all()
    return rows


def _by_week(
    connection: Connection,
    older: sa.Select[Any],
    boundary: cursors.Position,
    oldest: int,
    wanted: int,
    probe: Callable[[int], sa.TextClause],
) -> list[Any]:
    """The first `wanted` rows of `older` (the dated rows past the walk's `boundary`), one
    GIN probe per week from the boundary's down to `oldest`."""
    assert boundary.date is not None
    rows: list[Any] = []
    with _planner(connection, "indexscan", "seqscan"):
        for week in range(week_of(boundary.date), oldest - 1, -1):
            in_week = older.where(probe(week))
            rows += connection.execute(order.newest_first(in_week, wanted - len(rows))).all()
            if len(rows) == wanted:
                break
    return rows
