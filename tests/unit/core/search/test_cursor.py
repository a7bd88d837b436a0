"""Search cursors: opaque positions bound to the workspace and the listing's filters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mailsync.core.search.cursor import Position, decode, encode
from mailsync.errors import SearchInputError

AT = Position(datetime(2026, 11, 25, 9, 30, 0, 123456, tzinfo=UTC), "msg_aaaaaaaaaaaaaaaaaaaaaaaa")


@pytest.mark.parametrize("position", [AT, Position(None, "msg_aaaaaaaaaaaaaaaaaaaaaaaa")])
def test_a_cursor_gives_back_its_position(position: Position) -> None:
    """Decoding a cursor with the same workspace and filters returns the exact position
    (microseconds included, so the keyset condition neither repeats nor skips)."""
    assert decode(encode(position, "ws-a", "f1"), "ws-a", "f1") == position


@pytest.mark.parametrize(("workspace", "fingerprint"), [("ws-b", "f1"), ("ws-a", "f2")])
def test_a_foreign_cursor_is_refused(workspace: str, fingerprint: str) -> None:
    """Another workspace's cursor, or one from a listing with other filters, is refused
    (param cursor) rather than silently paging something else."""
    with pytest.raises(SearchInputError) as caught:
        decode(encode(AT, "ws-a", "f1"), workspace, fingerprint)
    assert caught.value.param == "cursor"


@pytest.mark.parametrize("cursor", ["", "x", "!!!", "e30", "eyJiIjoxfQ", "bnVsbA", "W10"])
def test_a_malformed_cursor_is_refused(cursor: str) -> None:
    """Anything that is not a cursor this code made is a SearchInputError, never a crash."""
    with pytest.raises(SearchInputError) as caught:
        decode(cursor, "ws-a", "f1")
    assert caught.value.param == "cursor"
