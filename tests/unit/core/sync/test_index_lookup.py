"""Looking up a page's rows probes the unique key on PostgreSQL, statistics or none."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from mailsync.core import workspaces
from mailsync.core.sync import index
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import Mailbox
from mailsync.providers.base import MessageRecord
from tests.support.databases import fresh_postgres_database

ROWS = 5_000


@pytest.fixture(scope="module")
def unanalyzed_index() -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL index of ROWS messages that ANALYZE has never seen."""
    with fresh_postgres_database() as url:
        with session_scope(url) as session:
            ws = workspaces.create_workspace(session, "lookup")
            mailbox = Mailbox(
                workspace_id=ws.id,
                provider="gmail",
                address="a@example.com",
                credentials_encrypted="-",
            )
            session.add(mailbox)
            session.flush()
            mailbox_id = mailbox.id
        records = [
            MessageRecord(
                provider_message_id=f"m{n}",
                thread_id=None,
                sender="ada@example.com",
                date=datetime(2026, 1, 1, tzinfo=UTC),
                subject=f"subject {n}",
            )
            for n in range(ROWS)
        ]
        with session_scope(url) as session:
            index.upsert(session, mailbox_id, records, 1)
        yield url, mailbox_id


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_the_lookup_reads_only_the_rows_it_asks_for_without_statistics(
    unanalyzed_index: tuple[str, str],
) -> None:
    """Without statistics a plain `IN (...)` scanned the whole (mailbox, generation) prefix and
    filtered by id, which made a first full sync quadratic; the lookup must touch only its
    own rows."""
    url, mailbox_id = unanalyzed_index
    wanted = [f"m{n}" for n in range(0, ROWS, 250)]
    statement = index.lookup("postgresql", mailbox_id, 1, wanted)
    with get_engine(url).connect() as connection:
        assert connection.execute(
            sa.text(
                "SELECT last_analyze, last_autoanalyze FROM pg_stat_user_tables "
                "WHERE relname = 'message'"
            )
        ).one() == (None, None)
        compiled = statement.compile(connection)
        explained = connection.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", compiled.params
        ).scalar_one()
        found = {row.provider_message_id for row in connection.execute(statement)}
    plan = (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]
    scanned = [node for node in _nodes(plan) if node.get("Relation Name") == "message"]
    shown = json.dumps(plan, indent=1)
    assert scanned, shown
    assert all(node.get("Rows Removed by Filter", 0) == 0 for node in scanned), shown
    assert sum(node["Actual Rows"] * node["Actual Loops"] for node in scanned) == len(wanted)
    assert found == set(wanted)
