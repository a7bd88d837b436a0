"""SQLite commits fsync, except a sync's replayable page transactions, and only those."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import sqlalchemy as sa

from mailsync import db

_FULL, _NORMAL = 2, 1


def _synchronous(connection: sa.Connection) -> int:
    return int(connection.exec_driver_sql("PRAGMA synchronous").scalar_one())


def test_only_a_replayable_transaction_skips_the_fsync(tmp_path: Path) -> None:
    """Inside `session_scope(replayable=True)` SQLite runs with synchronous=NORMAL; a plain
    scope, and every pooled connection once the replayable one is back, with FULL (a relaxed
    connection handed on would make an API key's or a job's commit lose its durability)."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    db.upgrade(url)
    try:
        with db.session_scope(url) as session:
            assert _synchronous(session.connection()) == _FULL
        with db.session_scope(url, replayable=True) as session:
            assert _synchronous(session.connection()) == _NORMAL
            session.connection().exec_driver_sql(
                "INSERT INTO workspace (id, name, created_at, nightly_full_sync) "
                "VALUES ('w', 'w', CURRENT_TIMESTAMP, 0)"
            )
        engine = db.get_engine(url)
        with ExitStack() as stack:  # more connections than were ever open: the used one too
            connections = [stack.enter_context(engine.connect()) for _ in range(4)]
            assert [_synchronous(c) for c in connections] == [_FULL] * 4
        with db.session_scope(url) as session:
            assert session.connection().exec_driver_sql("SELECT id FROM workspace").scalar() == "w"
    finally:
        db.dispose_engines()
