"""Every page of a search, on both databases, against a listing computed here from the same
messages: PostgreSQL's listing walk, week probes and undated tail, with short and default
walks, cursors across weeks and date bounds on week edges."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from mailsync import db
from mailsync.core.search import ids, postgres_text, store
from mailsync.core.search import query as language
from mailsync.core.sync import index
from mailsync.providers.base import MessageRecord
from tests.support.mailboxes import bare_mailbox

WEEK = timedelta(weeks=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # weeks count from here (a Thursday)
START = EPOCH + (datetime(2025, 1, 1, tzinfo=UTC) - EPOCH) // WEEK * WEEK  # a week's start
US = timedelta(microseconds=1)
VOCABULARY = ["alpha", "bravo", "charlie", "delta", "echo"]
LABELS = ["INBOX", "Label_7", "Été"]


def _dates(rng: random.Random) -> Iterator[datetime | None]:
    """Dates over 12 weeks (some left empty), on and just before week starts, in ties, and
    some messages without a date."""
    weeks = [w for w in range(12) if w not in (3, 4, 5, 9)]
    tie = START + 7 * WEEK + timedelta(hours=5)
    while True:
        kind = rng.random()
        week_start = START + rng.choice(weeks) * WEEK
        if kind < 0.1:
            yield None
        elif kind < 0.2:
            yield week_start
        elif kind < 0.3:
            yield week_start - US
        elif kind < 0.4:
            yield tie
        else:
            yield week_start + timedelta(seconds=rng.randrange(int(WEEK.total_seconds())))


def _records(rng: random.Random, count: int) -> list[MessageRecord]:
    records = []
    for number, date in zip(range(count), _dates(rng), strict=False):
        # "echo" only before week 6, "delta" rare: words that live in the past, or seldom.
        pool = VOCABULARY if date is None or date < START + 6 * WEEK else VOCABULARY[:3]
        words = rng.sample(pool, 2) + (["delta"] if rng.random() < 0.05 else [])
        records.append(
            MessageRecord(
                provider_message_id=f"p{number}",
                thread_id=None,
                sender=f"{rng.choice(VOCABULARY)} <x@example.com>",
                to=["team@example.com"],
                subject=" ".join(words),
                snippet="",
                date=date,
                labels=rng.sample(LABELS, rng.randrange(3)),
                size=1,
            )
        )
    return records


def _tokens(record: MessageRecord) -> set[str]:
    text = " ".join([record.subject or "", record.snippet or "", record.sender or "", *record.to])
    return {token.lower() for token in language._TOKEN.findall(text)}


def _matches(record: MessageRecord, filters: store.Filters) -> bool:
    tokens = _tokens(record)
    for term in language.parse(filters.q or ""):
        (word,) = term.words
        if not any(t == word or (term.prefix and t.startswith(word)) for t in tokens):
            return False
    if filters.label is not None and filters.label.lower() not in {
        label.lower() for label in record.labels
    }:
        return False
    if filters.after is not None and (record.date is None or record.date < filters.after):
        return False
    return filters.before is None or (record.date is not None and record.date < filters.before)


def _expected(mailbox_id: str, records: list[MessageRecord], filters: store.Filters) -> list[str]:
    found = [(r.date, ids.message_id(mailbox_id, r.provider_message_id)) for r in records
             if _matches(r, filters)]  # fmt: skip
    dated = sorted(((d, i) for d, i in found if d is not None), reverse=True)
    undated = sorted((i for d, i in found if d is None), reverse=True)
    return [i for _, i in dated] + undated


def _listed(url: str, workspace_id: str, filters: store.Filters, **options: Any) -> list[str]:
    shown: list[str] = []
    cursor: str | None = None
    while True:
        with Session(db.get_engine(url)) as session:
            page = store.search(session, workspace_id, filters, cursor=cursor, **options)
        shown += [m.id for m in page.messages]
        if page.next_cursor is None:
            return shown
        cursor = page.next_cursor


def _write(url: str, mailbox_id: str, records: list[MessageRecord], generation: int = 0) -> None:
    with db.session_scope(url) as session:
        index.upsert(session, mailbox_id, records, generation)


@pytest.fixture(scope="module")
def written(database_url: str) -> tuple[str, str, list[MessageRecord]]:
    """A workspace of 160 messages over 12 weeks, beside another workspace holding the same
    words and labels and a rebuild in progress (both must stay invisible)."""
    rng = random.Random(16)
    workspace_id = f"ws-{secrets.token_hex(4)}"
    mailbox_id = bare_mailbox(database_url, workspace_id)
    records = _records(rng, 160)
    _write(database_url, mailbox_id, records)
    _write(database_url, mailbox_id, _records(random.Random(1), 40), generation=1)
    _write(database_url, bare_mailbox(database_url, f"other-{workspace_id}"), _records(rng, 60))
    return workspace_id, mailbox_id, records


def _queries() -> list[store.Filters]:
    edge = START + 6 * WEEK
    return [
        store.Filters(q="alpha"),
        store.Filters(q="echo"),
        store.Filters(q="delta"),
        store.Filters(q="ch*"),
        store.Filters(q="echo delta"),
        store.Filters(label="Été"),  # non-ASCII: as written (SQLite folds ASCII only)
        store.Filters(q="echo", label="inbox"),
        store.Filters(q="alpha", after=edge, before=edge + 3 * WEEK),
        store.Filters(q="echo", after=edge - WEEK - US, before=edge),
        store.Filters(label="label_7", after=START + WEEK, before=edge + US),
        store.Filters(q="zulu"),
    ]


@pytest.mark.parametrize(("walk_rows", "limit"), [(1, 3), (4, 1), (postgres_text.WALK_ROWS, 4)])
def test_every_page_of_every_search_is_the_listing_in_order(
    written: tuple[str, str, list[MessageRecord]], database_url: str, walk_rows: int, limit: int
) -> None:
    """Walking a search's pages to the end shows exactly the workspace's live messages that
    match, newest first, undated last, id descending among equal dates: none repeated or
    skipped, whether found by the listing walk or by week probes (a walk of 1 or 4 rows
    leaves nearly everything to the probes), across empty weeks, ties and week edges."""
    workspace_id, mailbox_id, records = written
    for filters in _queries():
        expected = _expected(mailbox_id, records, filters)
        listed = _listed(database_url, workspace_id, filters, limit=limit, walk_rows=walk_rows)
        assert listed == expected, filters


def test_postgresql_weeks_are_the_week_terms_the_column_holds(postgres_url: str) -> None:
    """The week Python asks for is the week of the index's terms, at a week's first
    microsecond, its last, before 1970 and far ahead: a message is found by its week's
    probe and by no other week's."""
    workspace_id = f"ws-{secrets.token_hex(4)}"
    mailbox_id = bare_mailbox(postgres_url, workspace_id)
    dates = [START, START - US, datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
             datetime(2099, 6, 1, 12, tzinfo=UTC)]  # fmt: skip
    records = [MessageRecord(provider_message_id=f"w{n}", thread_id=None, sender=None, to=[],
                             subject="weekly", snippet="", date=d, labels=[], size=1)
               for n, d in enumerate(dates)]  # fmt: skip
    _write(postgres_url, mailbox_id, records)
    probe = sa.text(
        "SELECT public_id FROM message WHERE message_week_terms(workspace_id, date, search, "
        "labels) @@ CAST(:terms AS tsquery)"
    )
    with db.get_engine(postgres_url).connect() as connection:
        terms = postgres_text.WeekTerms.read(
            connection, workspace_id, language.parse("weekly"), None
        )
        for record in records:
            assert record.date is not None
            week = postgres_text.week_of(record.date)
            found = [
                set(connection.execute(probe, {"terms": terms.tsquery(str(w))}).scalars())
                for w in (week - 1, week, week + 1)
            ]
            public_id = ids.message_id(mailbox_id, record.provider_message_id)
            assert public_id in found[1] and public_id not in found[0] | found[2], record.date
