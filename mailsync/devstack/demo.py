"""`mailsync up --demo`'s demo: a `demo` workspace with two fake mailboxes, a key, a first sync."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from rich.console import Console

from mailsync import db
from mailsync.core import apikeys, workspaces
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.devstack.fakes import Fakes
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings

WORKSPACE = "demo"
GMAIL_ADDRESS = "demo.user@gmail.example"
MICROSOFT_ADDRESS = "demo.user@contoso.example"

# How the demo follows its first sync to the end: (settings, orchestrator, job id); the CLI
# passes its progress display (mailsync/cli/progress.py).
FollowJob = Callable[[Settings, Orchestrator, str], object]

console = Console()


def fake_account(base_url: str, ca_path: Path, address: str) -> dict[str, object]:
    """Ask a fake for a mailbox and the credentials that open it."""
    response = httpx.post(
        f"{base_url}/_admin/mailboxes",
        json={"address": address},
        verify=str(ca_path),
        trust_env=False,
        timeout=30,
    )
    response.raise_for_status()
    credentials: dict[str, object] = response.json()["credentials"]
    return credentials


def seed_workspace(settings: Settings, fakes: Fakes) -> str:
    """Create the demo workspace, connect both fake mailboxes; return the demo API key."""
    box = CredentialBox(settings.fernet_key())
    key_file = settings.data_dir / "demo-api-key"
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, WORKSPACE, "Demo workspace")
        for provider, url, address in (
            ("gmail", fakes.gmail_url, GMAIL_ADDRESS),
            ("microsoft", fakes.microsoft_url, MICROSOFT_ADDRESS),
        ):
            credentials = fake_account(url, fakes.ca_path, address)
            workspaces.connect_mailbox(session, box, WORKSPACE, provider, address, credentials)
        if key_file.exists():
            existing = key_file.read_text().strip()
            if apikeys.authenticate(session, existing) is not None:
                return existing
        _, plaintext = apikeys.create_api_key(
            session, WORKSPACE, ["write:email", "read:email"], name="demo"
        )
    key_file.write_text(plaintext + "\n")
    key_file.chmod(0o600)
    return plaintext


def run_demo(
    settings: Settings, fakes: Fakes, api: str, prefect_api: str, follow: FollowJob
) -> str:
    """Seed the demo workspace, sync it once (followed by `follow`); return what to print:
    the demo key and the spec's curl example against `api`."""
    key = seed_workspace(settings, fakes)
    orchestrator = Orchestrator(prefect_api, settings)
    try:
        with db.session_scope(settings.resolved_database_url) as session:
            job = orchestrator.trigger(session, WORKSPACE, "incremental", None, trigger="cli")
        console.print(f"initial sync of the demo mailboxes: {job.id}")
        follow(settings, orchestrator, job.id)
    finally:
        orchestrator.close()
    curl = (
        f"curl -X POST {api}/v1/email/sync \\\n"
        f'  -H "Authorization: Bearer {key}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        "  -d '{}'"
    )
    return "\n".join(
        [
            f"demo API key (also in {settings.data_dir / 'demo-api-key'}):",
            key,
            "",
            "trigger a sync (the spec's example):",
            curl,
            "",
            "then follow the job:",
            f'curl -H "Authorization: Bearer {key}" {api}/v1/email/sync/<job_id>',
            "",
        ]
    )
