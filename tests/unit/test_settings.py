"""Settings: defaults that work on one machine, and database URLs used unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsync.settings import Settings


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    """Without a database URL the index lives in a SQLite file in the data directory."""
    url = Settings(data_dir=tmp_path).resolved_database_url
    assert url == f"sqlite:///{tmp_path.resolve() / 'mailsync.db'}"


@pytest.mark.parametrize(
    "given", ["postgresql://u@h:5432/d", "postgres://u@h:5432/d", "postgresql+psycopg://u@h:5432/d"]
)
def test_postgres_urls_select_the_shipped_driver(given: str) -> None:
    """A plain PostgreSQL URL works unchanged: it is mapped onto psycopg 3."""
    assert Settings(database_url=given).resolved_database_url == "postgresql+psycopg://u@h:5432/d"


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every setting is read from MAILSYNC_*."""
    monkeypatch.setenv("MAILSYNC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MAILSYNC_API_PORT", "9001")
    settings = Settings()
    assert settings.data_dir == tmp_path and settings.api_port == 9001
