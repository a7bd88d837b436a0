"""The admin CLI: workspaces, keys, mailboxes, sync and jobs, with secrets never echoed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from mailsync.cli import app
from mailsync.core import apikeys, workspaces
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import ApiKey, Mailbox, SyncJob, new_id, utcnow
from mailsync.settings import Settings, get_settings
from tests.support.stack import ENCRYPTION_KEY, FakeProviders, PrefectStack

runner = CliRunner()


def _env(settings: Settings, fakes: FakeProviders, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSYNC_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MAILSYNC_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("MAILSYNC_ENCRYPTION_KEY", ENCRYPTION_KEY)
    for key, value in fakes.env().items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()


@pytest.fixture
def cli_env(
    settings: Settings, fakes: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    _env(settings, fakes, monkeypatch)
    yield settings
    get_settings.cache_clear()


def test_workspace_key_lifecycle(cli_env: Settings) -> None:
    """A created key is printed once on stdout, stored hashed, and revocable by id."""
    assert runner.invoke(app, ["workspace", "create", "cli-ws"]).exit_code == 0
    result = runner.invoke(app, ["key", "create", "-w", "cli-ws", "-s", "read:email"])
    assert result.exit_code == 0, result.output
    plaintext = result.stdout.strip().splitlines()[-1]
    assert plaintext.startswith("wbk_")
    with Session(get_engine(cli_env.resolved_database_url)) as session:
        key = session.exec(
            select(ApiKey).where(ApiKey.key_hash == apikeys.hash_key(plaintext))
        ).one()
    assert runner.invoke(app, ["key", "revoke", key.id]).exit_code == 0
    with Session(get_engine(cli_env.resolved_database_url)) as session:
        assert apikeys.authenticate(session, plaintext) is None
    bad = runner.invoke(app, ["key", "create", "-w", "cli-ws", "-s", "root"])
    assert bad.exit_code == 1 and "unknown scopes" in bad.output
    missing = runner.invoke(app, ["key", "create", "-w", "nope"])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_mailbox_connect_never_echoes_secrets(
    cli_env: Settings, fakes: FakeProviders, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Credentials from the environment or a file are stored encrypted and never printed."""
    runner.invoke(app, ["workspace", "create", "cli-mb"])
    gmail = fakes.gmail.create_mailbox("cli@gmail.example").provider_credentials()
    monkeypatch.setenv("MAILSYNC_GMAIL_CREDENTIALS", json.dumps(gmail))
    result = runner.invoke(
        app, ["mailbox", "connect", "gmail", "-w", "cli-mb", "--address", "cli@gmail.example"]
    )
    assert result.exit_code == 0, result.output
    microsoft = fakes.microsoft.create_mailbox("cli@microsoft.example").provider_credentials()
    path = tmp_path / "ms.json"
    path.write_text(json.dumps(microsoft))
    result2 = runner.invoke(
        app,
        ["mailbox", "connect", "microsoft", "-w", "cli-mb", "--address", "cli@microsoft.example",
         "--credentials-file", str(path)],
    )  # fmt: skip
    assert result2.exit_code == 0, result2.output
    secrets = [gmail["refresh_token"], gmail["client_secret"], microsoft["client_secret"]]
    with Session(get_engine(cli_env.resolved_database_url)) as session:
        stored = session.exec(select(Mailbox).where(Mailbox.workspace_id == "cli-mb")).all()
    assert len(stored) == 2
    for secret in secrets:
        assert secret not in result.output + result2.output
        assert all(secret not in m.credentials_encrypted for m in stored)

    broken = dict(gmail, refresh_token=None)
    path.write_text(json.dumps(broken) + "}")
    bad = runner.invoke(
        app,
        ["mailbox", "connect", "gmail", "-w", "cli-mb", "--address", "x@gmail.example",
         "--credentials-file", str(path)],
    )  # fmt: skip
    assert bad.exit_code == 1 and "not valid JSON" in bad.output
    assert gmail["client_secret"] not in bad.output


@pytest.mark.integration
def test_sync_wait_and_jobs_table(
    prefect_stack: PrefectStack, fakes: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mailsync sync --wait` follows a real job to completion and `jobs` lists it."""
    _env(prefect_stack.settings, fakes, monkeypatch)
    monkeypatch.setenv("MAILSYNC_PREFECT_API_URL", prefect_stack.api_url)
    monkeypatch.setenv("MAILSYNC_PREFECT_AUTH_STRING", prefect_stack.auth_string)
    runner.invoke(app, ["workspace", "create", "cli-sync"])
    monkeypatch.setenv(
        "MAILSYNC_MICROSOFT_CREDENTIALS",
        json.dumps(fakes.microsoft.create_mailbox("sync@microsoft.example").provider_credentials()),
    )
    runner.invoke(
        app,
        [
            "mailbox",
            "connect",
            "microsoft",
            "-w",
            "cli-sync",
            "--address",
            "sync@microsoft.example",
        ],
    )
    try:
        result = runner.invoke(app, ["sync", "-w", "cli-sync", "--wait"])
        assert result.exit_code == 0, result.output
        assert "completed" in result.output
        job_id = result.output.split("queued ", 1)[1].split()[0]
        table = runner.invoke(app, ["jobs", "-w", "cli-sync"], env={"COLUMNS": "250"})
        assert job_id in table.output and "completed" in table.output
        missing = runner.invoke(app, ["sync", "-w", "cli-sync", "--provider", "gmail"])
        assert missing.exit_code == 1 and "no gmail mailbox" in missing.output
    finally:
        get_settings.cache_clear()


@pytest.mark.integration
# The deletes are tested on both databases in tests/unit/core/test_retention.py.
@pytest.mark.only_database("sqlite")
def test_prune_deletes_old_finished_jobs_now_and_keeps_young_ones(
    cli_env: Settings, prefect_stack: PrefectStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mailsync prune` deletes a job finished past MAILSYNC_RETENTION_DAYS and keeps one
    finished within it, then prunes Prefect (nothing there is old on the real clock)."""
    monkeypatch.setenv("MAILSYNC_PREFECT_API_URL", prefect_stack.api_url)
    monkeypatch.setenv("MAILSYNC_PREFECT_AUTH_STRING", prefect_stack.auth_string)
    monkeypatch.setenv("MAILSYNC_RETENTION_DAYS", "30")
    get_settings.cache_clear()
    url = cli_env.resolved_database_url
    ended = {"old": utcnow() - timedelta(days=31), "young": utcnow() - timedelta(days=29)}
    with session_scope(url) as session:
        ws = workspaces.create_workspace(session, new_id("ws").lower().replace("_", "-")).id
        jobs = {
            age: SyncJob(
                workspace_id=ws, mode="full", status="completed", queued_at=at, finished_at=at
            )
            for age, at in ended.items()
        }
        session.add_all(jobs.values())
        session.flush()
        ids = {age: job.id for age, job in jobs.items()}

    result = runner.invoke(app, ["prune"])

    assert result.exit_code == 0, result.output
    assert "records:" in result.output and "prefect:" in result.output
    with Session(get_engine(url)) as session:
        assert session.get(SyncJob, ids["old"]) is None
        assert session.get(SyncJob, ids["young"]) is not None
    assert runner.invoke(app, ["prune", "--no-prefect"]).exit_code == 0
