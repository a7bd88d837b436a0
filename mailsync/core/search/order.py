"""The listing order (date descending, messages without a date last, then id descending) as
SQL conditions and clauses, shared by every way a page is read."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from mailsync.core.search.cursor import Position
from mailsync.db.tables import Message, as_utc

_m = Message.__table__.c  # type: ignore[attr-defined]


def dated_after(position: Position) -> sa.ColumnElement[bool]:
    """Dated messages strictly after a dated `position`: `date <= d` bounds the index walk,
    the rest only sorts out rows of that same date."""
    when = as_utc(position.date)
    return sa.and_(_m.date <= when, sa.or_(_m.date < when, _m.public_id < position.id))


def dated_up_to(position: Position) -> sa.ColumnElement[bool]:
    """Dated messages at or before a dated `position` (the complement of dated_after):
    `date >= d` bounds the index walk from below."""
    when = as_utc(position.date)
    return sa.and_(_m.date >= when, sa.or_(_m.date > when, _m.public_id >= position.id))


def undated_after(position: Position | None) -> sa.ColumnElement[bool]:
    """Undated messages after `position` (all of them after a dated one or from the top)."""
    if position is None or position.date is not None:
        return _m.date.is_(None)
    return sa.and_(_m.date.is_(None), _m.public_id < position.id)


def after(position: Position) -> sa.ColumnElement[bool]:
    """Every message strictly after `position`, as one condition (an OR: no index walk can
    start from it on PostgreSQL, so walks use the two halves above)."""
    if position.date is None:
        return undated_after(position)
    return sa.or_(dated_after(position), _m.date.is_(None))


def newest_first(statement: sa.Select[Any], limit: int) -> sa.Select[Any]:
    """Dated rows in listing order, the first `limit` of them."""
    return statement.order_by(_m.date.desc(), _m.public_id.desc()).limit(limit)
