"""Migration 0007 on a database with messages: ids and the full-text index are backfilled."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from mailsync import db
from mailsync.core.search import ids, store
from tests.support.databases import migrate, migrated_database


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_upgrading_backfills_ids_and_full_text(kind: str, tmp_path: Path) -> None:
    """Rows written before 0007 (at 0006) get their stable id and are found by full text
    after the upgrade; the downgrade to 0006 and back works on both databases."""
    with migrated_database(kind, tmp_path) as url:
        migrate(url, "downgrade", "0006")
        with db.get_engine(url).begin() as connection:
            connection.execute(sa.text("INSERT INTO workspace (id, name, created_at, "
                                       "nightly_full_sync) VALUES ('w', 'w', :t, false)"),
                               {"t": datetime.now(UTC)})  # fmt: skip
            connection.execute(
                sa.text("INSERT INTO mailbox (id, workspace_id, provider, address, "
                        "credentials_encrypted, created_at, generation, credentials_version) "
                        "VALUES ('mbx_1', 'w', 'gmail', 'a@x', '-', :t, 0, 0)"),
                {"t": datetime.now(UTC)},
            )  # fmt: skip
            for n in range(3):
                connection.execute(
                    sa.text("INSERT INTO message (mailbox_id, generation, provider_message_id, "
                            "subject, \"to\", cc, labels, date) VALUES ('mbx_1', 0, :p, :s, "
                            "'[]', '[]', '[]', :t)"),
                    {"p": f"p{n}", "s": f"old letter {n}",
                     "t": datetime(2026, 1, n + 1, tzinfo=UTC)},
                )  # fmt: skip
        migrate(url, "upgrade", "head")
        with Session(db.get_engine(url)) as session:
            page = store.search(session, "w", store.Filters(q="letter"))
            assert [m.id for m in page.messages] == [
                ids.message_id("mbx_1", f"p{n}") for n in (2, 1, 0)
            ]
            assert store.search(session, "w", store.Filters(q='"letter 1"')).messages[0].id == (
                ids.message_id("mbx_1", "p1")
            )
        db.dispose_engines()
