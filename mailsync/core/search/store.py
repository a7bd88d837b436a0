"""Listing and searching a workspace's live index: filters, full text and keyset pages.

Only each mailbox's live generation is read (a rebuild in progress is invisible until its
switch). Full text is the database's own: FTS5 MATCH on SQLite, a tsvector @@ tsquery on
PostgreSQL (migration 0007); the query text only ever travels as a bound parameter.
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


def _visible(workspace_id: str) -> sa.Select[Any]:
    return (
        sa.select(_message, _mailbox.c.provider)
        .select_from(_message.join(_mailbox, _mailbox.c.id == _message.c.mailbox_id))
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


def _full_text(dialect: str, terms: list[language.Term]) -> sa.ColumnElement[bool]:
    if dialect == "sqlite":
        match = sa.text(
            "message.id IN (SELECT rowid FROM message_fts WHERE message_fts MATCH :fts)"
        ).bindparams(fts=language.to_fts5(terms))
        return sa.and_(match)
    return sa.and_(
        sa.text("message.search @@ to_tsquery('simple', :tsq)").bindparams(
            tsq=language.to_tsquery(terms)
        )
    )


def _apply(statement: sa.Select[Any], dialect: str, filters: Filters) -> sa.Select[Any]:
    m = _message.c
    if filters.q and filters.q.strip():
        statement = statement.where(_full_text(dialect, language.parse(filters.q)))
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
    if filters.label is not None:
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


def _after(position: cursors.Position) -> sa.ColumnElement[bool]:
    """Strictly after `position` in the order date desc (missing dates last), id desc."""
    m = _message.c
    if position.date is None:
        return sa.and_(m.date.is_(None), m.public_id < position.id)
    when = _utc(position.date)
    return sa.or_(
        m.date < when, sa.and_(m.date == when, m.public_id < position.id), m.date.is_(None)
    )


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


def search(
    session: Session,
    workspace_id: str,
    filters: Filters,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    """One page of the workspace's messages matching `filters`, newest first.
    SearchInputError for a q or cursor that cannot be used (its `param` says which)."""
    dialect = session.get_bind().dialect.name
    fingerprint = filters.fingerprint()
    statement = _apply(_visible(workspace_id), dialect, filters)
    if cursor is not None:
        statement = statement.where(_after(cursors.decode(cursor, workspace_id, fingerprint)))
    m = _message.c
    statement = statement.order_by(m.date.desc().nulls_last(), m.public_id.desc()).limit(limit + 1)
    rows = session.connection().execute(statement).all()
    page = Page([_view(r) for r in rows[:limit]])
    if len(rows) > limit:
        last = rows[limit - 1]
        position = cursors.Position(as_utc(last.date), last.public_id)
        page.next_cursor = cursors.encode(position, workspace_id, fingerprint)
    return page


def get(session: Session, workspace_id: str, public_id: str) -> MessageView | None:
    """The workspace's live message with this id, or None (unknown, or another workspace's)."""
    statement = _visible(workspace_id).where(_message.c.public_id == public_id)
    row = session.connection().execute(statement).first()
    return _view(row) if row is not None else None
