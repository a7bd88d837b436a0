"""SQLite's message rowids in listing order, so FTS5 walks a workspace's matches newest first.

FTS5 returns matches in rowid order, cheaply and with early exit under a LIMIT, but sorts by
nothing else: a search that had to sort its matches by date cost time in proportion to their
number (a common word: 100k+ rows). So on SQLite a message's rowid is its listing position:
the second of its date (clamped to a range the rowid can hold; 1 for an undated message, so
it sorts last), counted down from the newest possible one, in the high bits, and a free slot
of that second in the low ones. Newest first is ascending rowids, the order FTS5 reads its
doclists in (it reads a long one backwards only by loading it whole). Rowids of one second
are in no particular order; the search puts each second's rows in the API's order
(date desc, id desc) itself. Full-text rows carry tokens of their own beside the text: the
message's workspace, and each label with the workspace in it (FTS5 intersects them with the
words; every term more costs an FTS5 AND a step).

PostgreSQL keeps its sequence: its planner weighs a tsvector match against the listing index
with statistics of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime

from mailsync.db.tables import as_utc

SLOT_BITS = 30  # a billion slots per second of dates
UNDATED = 1
_FIRST_DATED = 2
_LAST_SECOND = 2**32  # year 2106: beyond it, dates share the last second's slots
_TOP = _LAST_SECOND + 1  # the newest second's rowids start at 1 << SLOT_BITS
_SLOTS = 2**SLOT_BITS
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def second_of(date: datetime | None) -> int:
    """The rowid's high part: monotone in the date (equal dates, equal seconds)."""
    if date is None:
        return UNDATED
    moment = as_utc(date)
    assert moment is not None
    return min(max(int(moment.timestamp()), _FIRST_DATED), _LAST_SECOND)


def rowids_of(second: int) -> tuple[int, int]:
    """The rowids of `second`: [first, end); a later second's are all smaller."""
    first = (_TOP - second) << SLOT_BITS
    return first, first + _SLOTS


def second_of_rowid(rowid: int) -> int:
    return _TOP - (rowid >> SLOT_BITS)


def candidates(date: datetime | None, public_id: str, generation: int) -> Iterator[int]:
    """Rowids to try for a new row, in order: a hash of the row's identity, then the next
    slots of the second (the caller skips taken ones; a billion per second never run out)."""
    low, _ = rowids_of(second_of(date))
    digest = hashlib.sha256(f"{public_id}\x00{generation}".encode()).digest()
    start = int.from_bytes(digest[:8], "big") % _SLOTS
    for step in range(_SLOTS):
        yield low + (start + step) % _SLOTS


def _hex(value: str) -> str:
    # The hex of the UTF-8 bytes, as SQLite's hex() writes it in the triggers (migration
    # 0008): one FTS5 token of letters and digits, whatever the value.
    return value.encode().hex().upper()


def workspace_token(workspace_id: str) -> str:
    return "w" + _hex(workspace_id)


def label_token(workspace_id: str, label: str) -> str:
    """A label of a workspace's message ('x' is no hex digit: it parts the two). Labels
    compare case-insensitively in ASCII, as SQLite's lower() folds them."""
    return "l" + _hex(workspace_id) + "x" + _hex(label.translate(_ASCII_LOWER))
