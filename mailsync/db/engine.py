"""Engine, sessions and schema upgrades (Alembic) for SQLite and PostgreSQL alike."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session

from mailsync.settings import ensure_private_dir

_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()
_RELAXED = "mailsync_synchronous_normal"
MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the API read while a sync writes; the busy timeout rides out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")  # every commit durable (see session_scope)
    cursor.close()


def _durable_again(dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
    # A connection a replayable transaction used goes back to the pool fsyncing every commit.
    if record.info.pop(_RELAXED, False) and dbapi_connection is not None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()


def _private_sqlite_file(path: Path) -> None:
    """The database file (mail, encrypted credentials) readable by its owner only: created
    0600 before SQLite opens it (its -wal and -shm files take the same mode)."""
    ensure_private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def get_engine(url: str) -> sa.Engine:
    """One engine per database URL per process."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                path = url.split("///", 1)[-1]
                if path and path != ":memory:":
                    _private_sqlite_file(Path(path))
                engine = sa.create_engine(
                    url, connect_args={"check_same_thread": False, "timeout": 30}
                )
                sa.event.listen(engine, "connect", _sqlite_pragmas)
                sa.event.listen(engine, "checkin", _durable_again)
            else:
                engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
            _engines[url] = engine
        return engine


def connection_lost(exc: BaseException) -> bool:
    """Did a statement fail because the connection to the database went away (a restart, a
    failover, `pg_terminate_backend`) or could not be made again yet? Retrying such work is
    safe: the transaction in flight was rolled back, and the pool (pool_pre_ping) replaces the
    dead connection. SQL errors and SQLite's errors are not. (psycopg reports no SQLSTATE for
    any failed connect, so a wrong password or database name counts too; a job meets those
    first in its open-job step, which fails the job.)"""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    # psycopg is only loaded by a PostgreSQL engine (importing it costs a flow run ~0.3 s).
    psycopg = sys.modules.get("psycopg")
    if (
        psycopg is not None
        and isinstance(exc, sa.exc.OperationalError)
        and isinstance(exc.orig, psycopg.OperationalError)
    ):
        # No SQLSTATE: the server could not be reached (refused, reset). Class 08: connection
        # exceptions; 57P0x: the server is shutting down, was terminated, or is starting up.
        sqlstate = exc.orig.sqlstate
        return sqlstate is None or sqlstate.startswith(("08", "57P"))
    return False


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(url: str, *, replayable: bool = False) -> Iterator[Session]:
    """A session that commits on success and rolls back on error.

    `replayable`: what it writes is written again if lost (a sync's page with its checkpoint
    or cursor), so on SQLite its commit skips the WAL's fsync (`synchronous=NORMAL`: still
    atomic, and in order: a power loss can only drop the newest such commits, and the next
    FULL commit makes them durable). Every other transaction keeps FULL."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        if replayable and session.get_bind().dialect.name == "sqlite":
            connection = session.connection()
            connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
            connection.info[_RELAXED] = True
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def upgrade(url: str) -> None:
    """Bring the schema to the newest revision (creates it on an empty database)."""
    # Imported here: Alembic (with Mako and Pygments) would add half a second to every flow
    # run's start, and only upgrades need it.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = get_engine(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
