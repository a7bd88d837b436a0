"""Migration 0010 (push channels) down and up again on a database with jobs: nothing else lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from mailsync import db
from tests.support.databases import migrate, migrated_database


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_downgrade_and_upgrade_keep_the_jobs(kind: str, tmp_path: Path) -> None:
    """Down to 0009 drops mailboxpush and syncjob.mailbox_id, keeping the job rows; up again
    brings both back (the job's mailbox_id NULL: a job of every mailbox)."""
    with migrated_database(kind, tmp_path) as url:
        engine = db.get_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO workspace (id, name, created_at, nightly_full_sync) "
                                 "VALUES ('ws', 'ws', CURRENT_TIMESTAMP, false)"))  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO syncjob (id, workspace_id, mode, providers, status, trigger, "
                    "queued_at, counts, progress, mailboxes, mailbox_id) VALUES ('sync_1', 'ws', "
                    "'incremental', '[]', 'completed', 'push', CURRENT_TIMESTAMP, '{}', '{}', "
                    "'[]', 'mbx_1')"
                )
            )
        migrate(url, "downgrade", "0009")
        inspector = sa.inspect(engine)
        assert "mailboxpush" not in inspector.get_table_names()
        assert "mailbox_id" not in {c["name"] for c in inspector.get_columns("syncjob")}
        migrate(url, "upgrade", "head")
        inspector = sa.inspect(engine)
        assert "mailboxpush" in inspector.get_table_names()
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, mailbox_id FROM syncjob")).all()
        assert [tuple(r) for r in rows] == [("sync_1", None)]
