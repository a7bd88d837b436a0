"""PostgreSQL searches with words or a label: a short listing walk, then week by week.

A GIN bitmap neither orders nor bounds matches by date, and the listing walk tests rows
one by one, so neither alone is fast for a word that lives only in older mail (every match
fetched and sorted, or every newer row tested). Migration 0014 indexes each word and label
of a message joined to its workspace and week, so "these words in this week" is a lookup of
a few short posting lists. A page is:
1. the listing walk over the next `walk_rows` rows of the workspace, newest first, testing
   each row's tsvector (a common word fills the page here);
2. then one probe of that index per week, newest first, from the walk's end down to
   `after` or the workspace's oldest message, in one statement: a week without a match
   costs tens of microseconds (migration 0015 keeps the index's pending list, which every
   probe reads, short), one with matches fetches only them;
3. then, as in every listing, the messages without a date (their own week, `u`).
Each step keeps the exact conditions (cursor, filters, generation, the words on the row's
own tsvector, so phrases too): the index only chooses which rows are looked at. The
planner is told which index each step means.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.util import ClauseAdapter

from mailsync.core.search import cursor as cursors
from mailsync.core.search import order
from mailsync.core.search import query as language
from mailsync.db.tables import Message, as_utc

WALK_ROWS = 500  # ~0.5 ms of row tests, about what a week's probe costs
_WEEK = timedelta(seconds=604_800)  # migration 0014's WEEK_SECONDS
_UNDATED = "u"  # and its UNDATED_WEEK
WEEK_MARK = "#"  # where a week goes in a prefix (no hex digit, no week)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_message: sa.Table = Message.__table__  # type: ignore[attr-defined]
_m = _message.c
# The same expression as 0014's index (EXPRESSION), or the index is not used.
_WEEK_TERMS = (
    "message_week_terms(message.workspace_id, message.date, message.search, message.labels)"
)
_IN_WEEK = f"{_WEEK_TERMS} @@ CAST(:week_terms AS tsquery)"
_LEXEME = re.compile(r"'([^']+)'")  # in to_tsquery's output: lexemes never hold a quote


def week_of(when: datetime) -> int:
    """The week number 0014's message_week() gives this instant (exact: no float)."""
    aware = as_utc(when)
    assert aware is not None
    return (aware - _EPOCH) // _WEEK


@dataclass(frozen=True)
class WeekTerms:
    """A search's words and label as the index's terms of any one week. The words are
    normalised by PostgreSQL (to_tsquery, as the index's by to_tsvector) and the prefix and
    label made by 0014's functions, once per search; each week's tsquery is then assembled
    here, so that planning a probe folds no function (0.3 ms a probe otherwise)."""

    words: str | None  # to_tsquery's text of the words, or None
    prefix: str  # message_week_prefix(workspace, WEEK_MARK)
    label: str | None  # the label's term, after the prefix

    @classmethod
    def read(
        cls,
        connection: Connection,
        workspace_id: str,
        terms: list[language.Term],
        label: str | None,
    ) -> WeekTerms:
        row = connection.execute(
            sa.text(
                "SELECT to_tsquery('simple', :words)::text AS words, "
                "message_week_prefix(:workspace, :mark) AS prefix, "
                "'l:' || md5(lower(:label)) AS label"
            ),
            {"words": language.to_tsquery(terms) if terms else None, "workspace": workspace_id,
             "mark": WEEK_MARK, "label": label},
        ).one()  # fmt: skip
        return cls(row.words, row.prefix, row.label)

    def tsquery(self, week: str) -> str:
        """Every word (a phrase's words too: the terms have no positions) and the label, as
        terms of `week`, AND-ed."""
        prefix = self.prefix.replace(WEEK_MARK, week)
        parts = []
        if self.words is not None:
            worded = _LEXEME.sub(lambda m: f"'{prefix}{m.group(1)}'", self.words)
            parts.append(f"({worded.replace('<->', '&')})")
        if self.label is not None:
            parts.append(f"'{prefix}{self.label}'")
        return " & ".join(parts)


@contextmanager
def _planner(connection: Connection, *plans: str) -> Iterator[None]:
    """Plan this step's statements without the named plan kinds (`enable_<plan>` off), in
    this transaction only, and each for its own values: a statement run often is prepared
    by the driver, and a generic plan of a week probe, blind to how few rows its terms
    match, may AND in bitmaps of the date conditions (seen with an earlier form of these
    probes: 85 ms for a week that takes 4).
    The settings before are put back after."""
    names = [f"enable_{plan}" for plan in plans] + ["plan_cache_mode"]
    values = ["off"] * len(plans) + ["force_custom_plan"]
    # Each row reads the setting, then changes it (select-list order).
    change = sa.text(
        "SELECT current_setting(n), set_config(n, v, true) FROM "
        "unnest(CAST(:names AS text[]), CAST(:values AS text[])) AS s(n, v)"
    )
    before = [row[0] for row in connection.execute(change, {"names": names, "values": values})]
    try:
        yield
    finally:
        connection.execute(change, {"names": names, "values": before})


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


def _weeks(
    connection: Connection, workspace_id: str, boundary: cursors.Position, after: datetime | None
) -> range:
    """The weeks past the walk's `boundary`, newest first, down to `after`'s or the oldest
    message's of the workspace."""
    assert boundary.date is not None
    oldest = after
    if oldest is None:
        oldest = connection.execute(
            sa.select(sa.func.min(_m.date)).where(_m.workspace_id == workspace_id)
        ).scalar_one()
    assert oldest is not None  # the boundary row has a date
    return range(week_of(boundary.date), week_of(oldest) - 1, -1)


def _week_by_week(
    older: sa.Select[Any], terms: str, words: sa.TextClause | None, weeks: range, wanted: int
) -> sa.Select[Any]:
    """The first `wanted` rows of `older` with `terms` (a tsquery, its week at WEEK_MARK) and
    `words` (on the row's own tsvector), probing `weeks` one after another in one statement:
    planned once, each week's probe a rescan of the same plan with the week's terms; the LIMIT
    stops at the page's end. A nested loop returns its rows in its outer side's order, the
    weeks newest first. The probe reads the week index alone (a subquery with an OFFSET, which
    no condition crosses): blind to how few rows a week's terms match, the planner would
    otherwise AND in a bitmap of the date conditions, built again for every week."""
    series = sa.func.generate_series(weeks[0], weeks[-1], -1).table_valued("week")
    in_week = sa.text(
        f"{_WEEK_TERMS} @@ CAST(replace(:terms, :mark, CAST(w.week AS text)) AS tsquery)"
    ).bindparams(terms=terms, mark=WEEK_MARK)
    probe = sa.select(_message).where(in_week)
    if words is not None:
        probe = probe.where(words)
    fenced = probe.offset(0).subquery("message")  # the name the text conditions use
    found = order.newest_first(ClauseAdapter(fenced).traverse(older), wanted).lateral("found")
    return (
        sa.select(found)
        .select_from(series.render_derived("w"))
        .join(found, sa.true())
        .limit(wanted)
    )


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
    # Read when first needed: most pages end in the walk.
    week_terms = functools.cache(lambda: WeekTerms.read(connection, workspace_id, terms, label))

    def in_week(week: str) -> sa.TextClause:
        return sa.text(_IN_WEEK).bindparams(week_terms=week_terms().tsquery(week))

    words = None
    worded = matching
    if terms:
        words = sa.text("message.search @@ to_tsquery('simple', :row_words)").bindparams(
            row_words=language.to_tsquery(terms)
        )
        worded = matching.where(words)
    rows: list[Any] = []
    if position is None or position.date is not None:
        dated = worded.where(_m.date.is_not(None))
        if position is not None:
            dated = dated.where(order.dated_after(position))
        boundary = _boundary(connection, workspace_id, position, after, before, walk_rows)
        walked = dated if boundary is None else dated.where(order.dated_up_to(boundary))
        with _planner(connection, "bitmapscan"):
            rows = list(connection.execute(order.newest_first(walked, wanted)).all())
        if boundary is not None and len(rows) < wanted:
            # After the boundary is after `position` too.
            older = matching.where(_m.date.is_not(None), order.dated_after(boundary))
            weeks = _weeks(connection, workspace_id, boundary, after)  # never empty
            probes = _week_by_week(
                older, week_terms().tsquery(WEEK_MARK), words, weeks, wanted - len(rows)
            )
            with _planner(connection, "indexscan", "seqscan"):
                rows += connection.execute(probes).all()
    if len(rows) < wanted:
        undated = worded.where(order.undated_after(position), in_week(_UNDATED))
        undated = undated.order_by(_m.public_id.desc()).limit(wanted - len(rows))
        with _planner(connection, "indexscan", "seqscan"):
            rows += connection.execute(undated).all()
    return rows
