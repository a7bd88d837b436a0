"""Listing and searching a workspace's live index: filters, full text and keyset pages.

Only each mailbox's live generation is read (a rebuild in progress is invisible until its
switch). Full text is the database's own: FTS5 MATCH on SQLite (sqlite_text.py), a
tsvector @@ tsquery on PostgreSQL (postgres_text.py); the query text only ever travels as a
bound parameter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from mailsync.core.search import cursor as cursors
from mailsync.core.search import order, postgres_text, sqlite_text
from mailsync.core.search import query as language
from mailsync.db.tables import Mailbox, Message, as_utc, iso

MAX_LIMIT = 100
DEFAULT_LIMIT = 25


@dataclass(frozen=True)
class Filters:
    """What a listing asks for; addresses and labels are compared case-insensitively."""

    q: str | None = None
    mailbox_id: str | None = None
    provider: str | None = None
    sender: str | None = None
    recipient: str | None = None  # in to or cc
    label: str | None = None
    after: datetime | None = None  # inclusive, UTC
    before: datetime | None = None  # exclusive, UTC
    thread_id: str | None = None

    def fingerprint(self) -> str:
        body = json.dumps(asdict(self), default=str, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class MessageView:
    id: str
    mailbox_id: str
    provider: str
    provider_message_id: str
    thread_id: str | None
    sender: str | None
    to: list[str]
    cc: list[str]
    subject: str | None
    snippet: str | None
    date: str | None
    labels: list[str]
    size: int | None


@dataclass
class Page:
    messages: list[MessageView] = field(default_factory=list)
    next_cursor: str | None = None


_message: sa.Table = Message.__table__  # type: ignore[attr-defined]
_mailbox: sa.Table = Mailbox.__table__  # type: ignore[attr-defined]


def _visible(workspace_id: str, *, from_text: bool = False) -> sa.Select[Any]:
    """The workspace's live messages; `from_text`: selected from SQLite's FTS5 table."""
    rows: sa.FromClause = _message.join(_mailbox, _mailbox.c.id == _message.c.mailbox_id)
    if from_text:
        rows = sqlite_text.rows_of_matches(_message, _mailbox)
    return (
        sa.select(_message, _mailbox.c.provider)
        .select_from(rows)
        # Both: the message's copy leads the listing index, the mailbox's is the authority.
        .where(_message.c.workspace_id == workspace_id)
        .where(_mailbox.c.workspace_id == workspace_id)
        .where(_message.c.generation == _mailbox.c.generation)
    )


def _utc(value: datetime) -> datetime:
    # SQLite stores the wall time without its zone: compare in UTC on both databases.
    aware = as_utc(value)
    assert aware is not None
    return aware


def _in_list(dialect: str, column: str, value: str, name: str) -> sa.TextClause:
    """`value` (lower-cased) is an element, case-insensitively, of the JSON list `column`."""
    if dialect == "sqlite":
        sql = f'EXISTS (SELECT 1 FROM json_each(message."{column}") WHERE lower(value) = :{name})'
    else:
        sql = (
            f'EXISTS (SELECT 1 FROM json_array_elements_text(message."{column}") AS e(v) '
            f"WHERE lower(e.v) = :{name})"
        )
    return sa.text(sql).bindparams(**{name: value.lower()})


def _apply(statement: sa.Select[Any], dialect: str, filters: Filters) -> sa.Select[Any]:
    """`filters` as SQL conditions, but for what the full text answers (q; on SQLite the
    label too: PostgreSQL's label term only chooses rows, this checks them exactly)."""
    m = _message.c
    if filters.mailbox_id is not None:
        statement = statement.where(m.mailbox_id == filters.mailbox_id)
    if filters.provider is not None:
        statement = statement.where(_mailbox.c.provider == filters.provider)
    if filters.sender is not None:
        address = filters.sender.lower()
        statement = statement.where(
            sa.or_(
                sa.func.lower(m.sender) == address,
                sa.func.lower(m.sender).like("%<" + _escape(address) + ">", escape="\\"),
            )
        )
    if filters.recipient is not None:
        statement = statement.where(
            sa.or_(
                _in_list(dialect, "to", filters.recipient, "to_address"),
                _in_list(dialect, "cc", filters.recipient, "cc_address"),
            )
        )
    if dialect != "sqlite" and filters.label is not None:
        statement = statement.where(_in_list(dialect, "labels", filters.label, "label"))
    if filters.after is not None:
        statement = statement.where(m.date >= _utc(filters.after))
    if filters.before is not None:
        statement = statement.where(m.date < _utc(filters.before))
    if filters.thread_id is not None:
        statement = statement.where(m.thread_id == filters.thread_id)
    return statement


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _view(row: Any) -> MessageView:
    return MessageView(
        id=row.public_id,
        mailbox_id=row.mailbox_id,
        provider=row.provider,
        provider_message_id=row.provider_message_id,
        thread_id=row.thread_id,
        sender=row.sender,
        to=list(row.to or []),
        cc=list(row.cc or []),
        subject=row.subject,
        snippet=row.snippet,
        date=iso(row.date),
        labels=list(row.labels or []),
        size=row.size,
    )


def _index_walk(
    session: Session, matching: sa.Select[Any], position: cursors.Position | None, wanted: int
) -> list[Any]:
    """The first `wanted` rows of `matching` after `position`, down the listing index: the
    dated messages, then the undated ones (an OR of both in one statement would make every
    page a scan from the top)."""
    m = _message.c
    rows: list[Any] = []
    if position is None or position.date is not None:
        dated = matching.where(m.date.is_not(None))
        if position is not None:
            dated = dated.where(order.dated_after(position))
        rows = list(session.connection().execute(order.newest_first(dated, wanted)).all())
    if len(rows) < wanted:
        undated = matching.where(order.undated_after(position))
        undated = undated.order_by(m.public_id.desc()).limit(wanted - len(rows))
        rows += session.connection().execute(undated).all()
    return rows


def search(
    session: Session,
    workspace_id: str,
    filters: Filters,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    walk_rows: int = postgres_text.WALK_ROWS,
) -> Page:
    """One page of the workspace's messages matching `filters`, newest first (messages
    without a date last). SearchInputError for a q or cursor that cannot be used (its
    `param` says which). `walk_rows`: PostgreSQL's listing walk before its week probes
    (postgres_text.py; tests make it short)."""
    dialect = session.get_bind().dialect.name
    fingerprint = filters.fingerprint()
    position = None if cursor is None else cursors.decode(cursor, workspace_id, fingerprint)
    terms = language.parse(filters.q) if filters.q and filters.q.strip() else []
    if dialect == "sqlite" and (terms or filters.label is not None):
        matching = _apply(_visible(workspace_id, from_text=True), dialect, filters)
        if position is not None:
            matching = matching.where(order.after(position))
        rows = sqlite_text.walk(
            session,
            matching,
            sqlite_text.expression(workspace_id, terms, filters.label),
            after=filters.after,
            before=filters.before,
            position_date=None if position is None else position.date,
            resuming=position is not None,
            wanted=limit + 1,
        )
    elif terms or filters.label is not None:
        rows = postgres_text.walk(
            session.connection(),
            _apply(_visible(workspace_id), dialect, filters),
            workspace_id,
            terms,
            filters.label,
            position=position,
            after=None if filters.after is None else _utc(filters.after),
            before=None if filters.before is None else _utc(filters.before),
            wanted=limit + 1,
            walk_rows=walk_rows,
        )
    else:
        matching = _apply(_visible(workspace_id), dialect, filters)
        rows = _index_walk(session, matching, position, limit + 1)
    page = Page([_view(r) for r in rows[:limit]])
    if len(rows) > limit:
        last = rows[limit - 1]
        page.next_cursor = cursors.encode(
            cursors.Position(as_utc(last.date), last.public_id), workspace_id, fingerprint
        )
    return page


def get(session: Session, workspace_id: str, public_id: str) -> MessageView | None:
    """The workspace's live message with this id, or None (unknown, or another workspace's)."""
    statement = _visible(workspace_id).where(_message.c.public_id == public_id)
    row = session.connection().execute(statement).first()
    return _view(row) if row is not None else None
