"""SQLite's rowids as listing positions, and the FTS5 tokens of workspaces and labels."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from itertools import islice

import pytest

from mailsync.core.search import rowkeys

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def test_a_later_second_has_smaller_rowids_and_undated_the_largest() -> None:
    """Ascending rowids are the listing order (newest first): every rowid of a later
    second is below every rowid of an earlier one, and undated messages come last."""
    seconds = [rowkeys.second_of(T0 + timedelta(seconds=n)) for n in (2, 1, 0)]
    seconds.append(rowkeys.second_of(None))
    spans = [rowkeys.rowids_of(s) for s in seconds]
    for (_, end), (following, _) in zip(spans, spans[1:], strict=False):
        assert end <= following
    assert all(0 < first < end < 2**63 for first, end in spans)


def test_dates_out_of_range_clamp_without_breaking_the_order() -> None:
    """Dates before 1970 or after 2106 share the edge seconds: the order stays monotone
    (equal, never inverted) and every rowid fits SQLite's signed 64 bits."""
    old, ancient = datetime(1969, 1, 1, tzinfo=UTC), datetime(1, 1, 2, tzinfo=UTC)
    far = datetime(9999, 1, 1, tzinfo=UTC)
    assert rowkeys.second_of(ancient) == rowkeys.second_of(old) > rowkeys.second_of(None)
    assert rowkeys.second_of(far) >= rowkeys.second_of(T0)
    assert rowkeys.rowids_of(rowkeys.second_of(far))[0] > 0
    assert rowkeys.rowids_of(rowkeys.second_of(None))[1] < 2**63


def test_candidates_stay_in_their_second_and_never_repeat() -> None:
    """A row's candidate rowids all belong to its date's second (so the listing order holds
    whichever is free), start at a hash of the row, and are distinct."""
    tries = list(islice(rowkeys.candidates(T0, "msg_a", 0), 1000))
    first, end = rowkeys.rowids_of(rowkeys.second_of(T0))
    assert all(first <= t < end for t in tries)
    assert all(rowkeys.second_of_rowid(t) == rowkeys.second_of(T0) for t in tries)
    assert len(set(tries)) == len(tries)
    assert next(rowkeys.candidates(T0, "msg_a", 0)) == tries[0]
    assert next(rowkeys.candidates(T0, "msg_a", 1)) != tries[0]  # another generation


@pytest.mark.parametrize("value", ["INBOX", "Label_7", "projects/falcon", "Été 2026", "x y"])
def test_tokens_are_what_sqlite_writes_in_the_triggers(value: str) -> None:
    """The query side's tokens equal the triggers' `'l' || hex(workspace_id) || 'x' ||
    hex(lower(label))` and `'w' || hex(workspace_id)` (migration 0008), for any text, on
    this SQLite."""
    connection = sqlite3.connect(":memory:")
    label, scope = connection.execute(
        "SELECT 'l' || hex(?) || 'x' || hex(lower(?)), 'w' || hex(?)", ("ws-1", value, value)
    ).fetchone()
    assert rowkeys.label_token("ws-1", value) == label
    assert rowkeys.label_token("ws-1", value.upper()) == label or not value.isascii()
    assert rowkeys.label_token("ws-2", value) != label
    assert rowkeys.workspace_token(value) == scope
