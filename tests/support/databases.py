"""The application databases: SQLite and a fresh PostgreSQL database per session, migrated."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from mailsync import db

POSTGRES_ADMIN_URL = os.environ.get(
    "MAILSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _postgres_problem() -> str | None:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {str(exc).splitlines()[0]}"


PG_PROBLEM = _postgres_problem()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, migrated PostgreSQL database, dropped afterwards."""
    if PG_PROBLEM:
        pytest.skip(PG_PROBLEM)
    name = f"mailsync_test_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        db.upgrade(url)
        yield url
    finally:
        db.dispose_engines()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The application database, once on SQLite and once on PostgreSQL."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'mailsync.db'}"
    db.upgrade(url)
    return url


@pytest.fixture(scope="session")
def unshared_database_url(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second application database of the same kind that no Prefect stack uses.

    For tests that run background work by hand (webhook deliveries): on `database_url` the
    shared stack's flow runs (a delivery run kicked or rescheduled by an earlier test) could
    claim their rows first."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite-unshared') / 'mailsync.db'}"
        db.upgrade(url)
        yield url
        return
    with fresh_postgres_database() as url:
        yield url


def migrate(url: str, action: str, revision: str) -> None:
    """Alembic's `upgrade` / `downgrade` to `revision` on the database at `url`."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    with db.get_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


@contextmanager
def migrated_database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh database at the newest revision: PostgreSQL, or a SQLite file in `workdir`."""
    if kind == "postgresql":
        with fresh_postgres_database() as url:
            yield url
        return
    url = f"sqlite:///{workdir / 'migrated.db'}"
    db.upgrade(url)
    yield url
