"""`mailsync messages search`: the live index searched from the command line."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from mailsync.cli import app
from mailsync.core import workspaces
from mailsync.core.sync import index
from mailsync.db import session_scope
from mailsync.db.tables import Mailbox
from mailsync.providers.base import MessageRecord
from mailsync.settings import Settings, get_settings
from tests.support.stack import ENCRYPTION_KEY

runner = CliRunner()


def test_search_prints_the_matching_messages(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command finds what the API would (full text AND-ed, --from), prints a table of
    the matches only, and refuses an unusable query or an unknown workspace with exit 1."""
    for name, value in {
        "MAILSYNC_DATA_DIR": str(settings.data_dir),
        "MAILSYNC_DATABASE_URL": settings.resolved_database_url,
        "MAILSYNC_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "COLUMNS": "200",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    ws = f"ws-{secrets.token_hex(4)}"
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, ws)
        mailbox = Mailbox(
            workspace_id=ws, provider="gmail", address="a@x", credentials_encrypted="-"
        )
        session.add(mailbox)
        session.flush()
        when = datetime(2026, 11, 1, tzinfo=UTC)
        index.upsert(session, mailbox.id, [
            MessageRecord("a", "t", "ada@acme.com", subject="Invoice March", date=when),
            MessageRecord("b", "t", "bob@acme.com", subject="Invoice April", date=when),
            MessageRecord("c", "t", "ada@acme.com", subject="Lunch", date=when),
        ], 0)  # fmt: skip
    try:
        found = runner.invoke(app, ["messages", "search", "-w", ws, "invoice", "--from",
                                    "ADA@acme.com"])  # fmt: skip
        assert found.exit_code == 0, found.output
        assert "Invoice March" in found.output and "1 message(s)" in found.output
        assert "April" not in found.output and "Lunch" not in found.output
        bad = runner.invoke(app, ["messages", "search", "-w", ws, '"open'])
        assert bad.exit_code == 1
        assert runner.invoke(app, ["messages", "search", "-w", "nope", "x"]).exit_code == 1
    finally:
        get_settings.cache_clear()
