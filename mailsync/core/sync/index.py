"""The searchable message index: applies provider pages to the database, idempotently.

The index is kept in generations: readers see the mailbox's `generation`; a full sync writes
the next one beside it and `switch` makes it live in one transaction, so a half-built or
failed rebuild is never seen and the previous index stays intact until the switch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, delete, select, update

from mailsync.core.search import rowkeys, sqlite_rows
from mailsync.core.search.ids import message_id
from mailsync.db.tables import Mailbox, Message, as_utc, utcnow
from mailsync.errors import BuildSupersededError, MailboxGoneError, MailsyncError
from mailsync.providers.base import FolderRemoval, MessageRecord

_CHUNK = 500  # keeps IN (...) lists well under every database's parameter limit
_TABLE: sa.Table = Message.__table__  # type: ignore[attr-defined]


@dataclass
class Counts:
    added: int = 0
    updated: int = 0
    deleted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "messages_added": self.added,
            "messages_updated": self.updated,
            "messages_deleted": self.deleted,
        }

    def __iadd__(self, other: Counts) -> Counts:
        self.added += other.added
        self.updated += other.updated
        self.deleted += other.deleted
        return self


def _fields(record: MessageRecord) -> dict[str, Any]:
    return {
        "thread_id": record.thread_id,
        "sender": record.sender,
        "to": list(record.to),
        "cc": list(record.cc),
        "subject": record.subject,
        "snippet": record.snippet,
        "date": record.date,
        "labels": list(record.labels),
        "size": record.size,
    }


def _changed(row: Message, fields: dict[str, Any]) -> bool:
    for key, value in fields.items():
        current = getattr(row, key)
        if key == "date":  # SQLite returns naive datetimes; compare both in UTC
            current, value = as_utc(current), as_utc(value)
        if current != value:
            return True
    return False


def lookup(dialect: str, mailbox_id: str, generation: int, ids: list[str]) -> Any:
    """The rows of `ids` in one generation of the mailbox (callers keep only rows of it).

    On PostgreSQL an `IN (...)` over the unique key is planned from statistics: while the
    rows being written have none (a first full sync into an empty index, a rebuild's new
    generation, before an ANALYZE) the planner expects one row under (mailbox, generation),
    scans that whole prefix and filters by id, so every page costs the size of the index so
    far and a full sync turns quadratic. Instead each id is probed by its public id, through
    the one index that starts with it: a lateral subquery that OFFSET 0 keeps from being
    flattened leaves the planner nothing else to choose, whatever the statistics
    (tests/unit/core/sync/test_index_lookup.py). The public id hashes (mailbox, provider id).
    """
    if dialect != "postgresql":
        return select(Message).where(
            Message.mailbox_id == mailbox_id,
            Message.generation == generation,
            col(Message.provider_message_id).in_(ids),
        )
    public_ids = [message_id(mailbox_id, pid) for pid in ids]
    keys = sa.func.unnest(sa.bindparam("public_ids", public_ids, type_=postgresql.ARRAY(sa.Text)))
    key = keys.table_valued("public_id").render_derived()
    probe = (
        sa.select(_TABLE)
        .where(_TABLE.c.public_id == key.c.public_id, _TABLE.c.generation == generation)
        .offset(0)
        .lateral("probe")
    )
    return select(aliased(Message, probe)).select_from(key).join(probe, sa.true())


def _rows(session: Session, mailbox_id: str, generation: int, ids: list[str]) -> dict[str, Message]:
    dialect = session.get_bind().dialect.name
    return {
        m.provider_message_id: m
        for m in session.exec(lookup(dialect, mailbox_id, generation, ids))
        if m.mailbox_id == mailbox_id
    }


def upsert(
    session: Session,
    mailbox_id: str,
    records: Iterable[MessageRecord],
    generation: int,
    *,
    compare_to: int | None = None,
    add_labels: bool = False,
) -> Counts:
    """Write `records` into `generation`; counts are relative to `compare_to` (by default the
    same generation): a rebuild counts what changed against the live index. `add_labels`
    (Page.folder_labels): a record's labels join the message's instead of replacing them."""
    counts = Counts()
    # New rows go in as one executemany of plain dicts: building a SQLModel object per message
    # (pydantic validation, default factories) cost more than the insert itself.
    new_rows: list[dict[str, Any]] = []
    relisted: list[Message] = []
    by_id = {r.provider_message_id: r for r in records}  # last one wins within a page
    ids = list(by_id)
    baseline_generation = generation if compare_to is None else compare_to
    ordered_rowids = session.get_bind().dialect.name == "sqlite"
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        target = _rows(session, mailbox_id, generation, chunk)
        baseline = (
            target
            if baseline_generation == generation
            else _rows(session, mailbox_id, baseline_generation, chunk)
        )
        for pid in chunk:
            fields = _fields(by_id[pid])
            row = target.get(pid)
            if add_labels and row is not None:
                fields["labels"] = sorted({*row.labels, *fields["labels"]})
            before = baseline.get(pid)
            if before is None:
                counts.added += 1
            elif _changed(before, fields):
                counts.updated += 1
            if row is not None and not _changed(row, fields):
                continue
            if row is not None and not (ordered_rowids and _moved_in_listing(row, fields)):
                for key, value in fields.items():
                    setattr(row, key, value)
                session.add(row)
                continue
            if row is not None:  # a new date on SQLite: a new rowid (rowkeys.py), same id
                relisted.append(row)
            new_rows.append(
                {
                    "mailbox_id": mailbox_id,
                    "generation": generation,
                    "provider_message_id": pid,
                    "public_id": message_id(mailbox_id, pid),
                    **fields,
                }
            )
    for row in relisted:
        session.delete(row)
    session.flush()
    if new_rows:
        workspace_id = session.exec(
            select(Mailbox.workspace_id).where(Mailbox.id == mailbox_id)
        ).one()
        for new_row in new_rows:
            new_row["workspace_id"] = workspace_id
        if ordered_rowids:
            _assign_rowids(session, new_rows)
            new_rows.sort(key=lambda row: row["id"])  # B-tree appends in order, as FTS5's
        session.execute(sa.insert(Message.__table__), new_rows)  # type: ignore[attr-defined]
        if ordered_rowids:  # PostgreSQL's tsvector is a generated column
            sqlite_rows.add(session, [row["id"] for row in new_rows])
    session.flush()
    return counts


def _moved_in_listing(row: Message, fields: dict[str, Any]) -> bool:
    return row.id is not None and rowkeys.second_of_rowid(row.id) != rowkeys.second_of(
        fields["date"]
    )


def _assign_rowids(session: Session, new_rows: list[dict[str, Any]]) -> None:
    """SQLite: each new row's rowid is its listing position, a free slot of its date's second
    (core/search/rowkeys.py); writes to SQLite are serialised, so free stays free."""
    pending = [
        (row, rowkeys.candidates(row["date"], row["public_id"], row["generation"]))
        for row in new_rows
    ]
    tries = [(row, slots, next(slots)) for row, slots in pending]
    chosen: set[int] = set()
    while tries:
        wanted = [rowid for _, _, rowid in tries]
        taken: set[int] = set()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            taken.update(
                session.connection()
                .execute(sa.select(_TABLE.c.id).where(_TABLE.c.id.in_(chunk)))
                .scalars()
            )
        again = []
        for row, slots, rowid in tries:
            if rowid in taken or rowid in chosen:
                again.append((row, slots, next(slots)))
            else:
                row["id"] = rowid
                chosen.add(rowid)
        tries = again


def remove(session: Session, mailbox_id: str, provider_ids: Iterable[str], generation: int) -> int:
    ids = list(dict.fromkeys(provider_ids))
    doomed: list[int] = []
    for start in range(0, len(ids), _CHUNK):
        rows = _rows(session, mailbox_id, generation, ids[start : start + _CHUNK])
        doomed.extend(row.id for row in rows.values() if row.id is not None)
    return _delete_rows(session, doomed)


def _delete_rows(session: Session, doomed: list[int]) -> int:
    for start in range(0, len(doomed), _CHUNK):
        session.exec(  # type: ignore[call-overload]
            delete(Message).where(col(Message.id).in_(doomed[start : start + _CHUNK]))
        )
    return len(doomed)


def remove_from_folders(
    session: Session, mailbox_id: str, removals: Iterable[FolderRemoval], generation: int
) -> int:
    """Take each removal's label off its message, and delete the messages left with none;
    returns how many were deleted. A message labelled otherwise was re-filed by the other half
    of its move (reported before this removal, in this sync or an earlier one) and stays."""
    gone: dict[str, set[str]] = {}
    for removal in removals:
        gone.setdefault(removal.provider_message_id, set()).add(removal.label)
    ids = list(gone)
    doomed: list[int] = []
    for start in range(0, len(ids), _CHUNK):
        for pid, row in _rows(session, mailbox_id, generation, ids[start : start + _CHUNK]).items():
            left = [label for label in row.labels if label not in gone[pid]]
            if len(left) == len(row.labels):
                continue
            if left:
                row.labels = left
                session.add(row)
            elif row.id is not None:
                doomed.append(row.id)
    session.flush()
    return _delete_rows(session, doomed)


def discard(session: Session, mailbox_id: str, generation: int) -> None:
    session.exec(  # type: ignore[call-overload]
        delete(Message).where(
            col(Message.mailbox_id) == mailbox_id, col(Message.generation) == generation
        )
    )


def _still_building(building: int, live: int) -> Any:
    return (col(Mailbox.building_generation) == building) & (col(Mailbox.generation) == live)


def _superseded(session: Session, mailbox_id: str, building: int) -> MailsyncError:
    if session.get(Mailbox, mailbox_id) is None:
        return MailboxGoneError(f"mailbox {mailbox_id} is no longer connected")
    return BuildSupersededError(
        f"another sync of mailbox {mailbox_id} took over building generation {building}"
    )


def keep_checkpoint(
    session: Session, mailbox_id: str, checkpoint: str | None, *, building: int, live: int
) -> None:
    """Store a build's checkpoint after a page, in the page's transaction: only while the
    mailbox still builds `building` over `live`, the fence every page of a build passes (a
    build another sync restarted or switched stops here, its page rolled back with it)."""
    stored = session.exec(  # type: ignore[call-overload]
        update(Mailbox)
        .where(col(Mailbox.id) == mailbox_id, _still_building(building, live))
        .values(checkpoint=checkpoint, checkpoint_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if stored.rowcount != 1:
        raise _superseded(session, mailbox_id, building)


def switch(session: Session, mailbox: Mailbox, generation: int, *, live: int) -> int:
    """Make `generation` live and drop `live`, the generation it was built over; returns how
    many messages disappeared. A compare-and-set on both: a build another sync switched or
    restarted meanwhile is refused (BuildSupersededError), so it can never drop the live
    index as "the old one"."""
    switched = session.exec(  # type: ignore[call-overload]
        update(Mailbox)
        .where(col(Mailbox.id) == mailbox.id, _still_building(generation, live))
        .values(
            generation=generation, building_generation=None, checkpoint=None, checkpoint_at=None
        )
        .execution_options(synchronize_session=False)
    )
    if switched.rowcount != 1:
        raise _superseded(session, mailbox.id, generation)
    session.expire(mailbox)
    table: sa.Table = Message.__table__  # type: ignore[attr-defined]
    old, new = table.alias("old"), table.alias("new")
    query = (
        sa.select(sa.func.count())
        .select_from(old)
        .where(old.c.mailbox_id == mailbox.id, old.c.generation == live)
        .where(
            ~sa.exists().where(
                new.c.mailbox_id == old.c.mailbox_id,
                new.c.generation == generation,
                new.c.provider_message_id == old.c.provider_message_id,
            )
        )
    )
    vanished = session.connection().execute(query).scalar_one()
    discard(session, mailbox.id, live)
    return int(vanished)


def message_ids(session: Session, mailbox_id: str) -> set[str]:
    """The provider ids readers see: the mailbox's live generation."""
    live = select(Mailbox.generation).where(Mailbox.id == mailbox_id).scalar_subquery()
    return set(
        session.exec(
            select(Message.provider_message_id).where(
                Message.mailbox_id == mailbox_id, Message.generation == live
            )
        ).all()
    )
