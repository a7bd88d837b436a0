"""The demo: fake providers, a `demo` workspace with one Gmail and one Microsoft mailbox, a key."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from mailsync.core import apikeys, workspaces
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.devstack.processes import Stack, http_ok, wait_until
from mailsync.fakes.server import free_port
from mailsync.fakes.tls import ensure_tls
from mailsync.settings import Settings

WORKSPACE = "demo"
GMAIL_ADDRESS = "demo.user@gmail.example"
MICROSOFT_ADDRESS = "demo.user@contoso.example"


@dataclass(frozen=True)
class Fakes:
    gmail_url: str
    microsoft_url: str
    ca_path: Path

    def env(self) -> dict[str, str]:
        """Settings that point mailsync at the fakes instead of Google and Microsoft."""
        return {
            "MAILSYNC_GOOGLE_TOKEN_URI": f"{self.gmail_url}/token",
            "MAILSYNC_GMAIL_API_URL": f"{self.gmail_url}/",
            "MAILSYNC_MICROSOFT_AUTHORITY_HOST": self.microsoft_url,
            "MAILSYNC_GRAPH_API_URL": f"{self.microsoft_url}/v1.0",
            "MAILSYNC_PROVIDER_CA_BUNDLE": str(self.ca_path),
            # The demo's fake Gmail enforces no quota; pacing to Google's 15,000 units a
            # minute would make the first sync of 3,000 messages take a minute.
            "MAILSYNC_GMAIL_QUOTA_UNITS_PER_MINUTE": os.environ.get(
                "MAILSYNC_GMAIL_QUOTA_UNITS_PER_MINUTE", "600000"
            ),
        }


def start_fakes(stack: Stack, data_dir: Path, seed_messages: int) -> Fakes:
    tls = ensure_tls(data_dir / "fakes-tls")
    gmail_port, microsoft_port = free_port(), free_port()
    stack.spawn(
        "fakes",
        [
            sys.executable, "-m", "mailsync.cli", "fakes",
            "--gmail-port", str(gmail_port),
            "--microsoft-port", str(microsoft_port),
            "--seed-messages", str(seed_messages),
            "--tls-dir", str(tls.ca_path.parent),
        ],
    )  # fmt: skip
    fakes = Fakes(
        f"https://127.0.0.1:{gmail_port}", f"https://127.0.0.1:{microsoft_port}", tls.ca_path
    )
    for url in (fakes.gmail_url, fakes.microsoft_url):
        wait_until(http_ok(f"{url}/_admin/stats", str(tls.ca_path)), "fake providers", 30, stack)
    return fakes


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
