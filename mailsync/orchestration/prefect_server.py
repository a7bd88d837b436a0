"""`python -m mailsync.orchestration.prefect_server`: `prefect server start`, with SQLite writers
that queue for the database instead of failing.

Prefect's SQLite configuration begins each explicit transaction DEFERRED. A transaction that
reads and then writes (a concurrency-limit increment, a flow run's labels, a state proposal)
cannot take the write lock once another connection has committed since its read: SQLite answers
SQLITE_BUSY(_SNAPSHOT) at once, without its busy handler, and Prefect's server turns that into a
503 that its client retries after ~2 s (2**1 s, no Retry-After). On the local stack that was one
2 s stall in most incremental jobs (BENCHMARKS.md, "Prefect on SQLite: writers that wait").
Beginning every explicit transaction IMMEDIATE, as Prefect already does for its `with_for_update`
ones, takes the write lock up front, where SQLite's busy timeout (60 s in Prefect) makes a
second writer wait its turn, milliseconds here. Reads outside explicit transactions stay
unlocked (WAL), as before.

This is Prefect's own database-configuration hook (`set_database_config`), installed before the
CLI builds the app in this process (single-process `server start`, services included). On
PostgreSQL nothing changes. Checked by tests/integration/orchestration/test_prefect_server.py.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from prefect.server.database.configurations import AioSqliteConfiguration
from prefect.server.database.dependencies import set_database_config
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction


class QueuedWritersSqliteConfiguration(AioSqliteConfiguration):
    """Prefect's SQLite configuration whose explicit transactions all begin IMMEDIATE."""

    @asynccontextmanager
    async def begin_transaction(
        self, session: AsyncSession, with_for_update: bool = False
    ) -> AsyncGenerator[AsyncSessionTransaction, None]:
        async with super().begin_transaction(session, with_for_update=True) as transaction:
            yield transaction


def install() -> bool:
    """Use the queued-writers configuration if the server's database is SQLite."""
    url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    if not url or not url.startswith("sqlite"):
        return False
    set_database_config(QueuedWritersSqliteConfiguration(connection_url=url))
    return True


def main(argv: list[str]) -> None:
    install()
    from prefect.cli import app

    sys.argv = [sys.argv[0], "server", "start", *argv]  # Prefect's CLI reads sys.argv
    app()


if __name__ == "__main__":
    main(sys.argv[1:])
