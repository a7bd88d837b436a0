"""`mailsync mailbox connect ... --oauth` (loopback redirect) and `--device-code` against the
fakes with the real libraries; the test plays only the user (the browser, the code typed)."""

from __future__ import annotations

import secrets
import ssl
import threading
from collections.abc import Iterator

import httpx
import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from mailsync.cli import app
from mailsync.cli import connect as cli_connect
from mailsync.core import workspaces
from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox
from mailsync.orchestration import runtime
from mailsync.settings import Settings, get_settings
from tests.support.stack import ENCRYPTION_KEY, FakeProviders

runner = CliRunner()


@pytest.fixture
def cli_env(
    settings: Settings, fakes: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The CLI's environment: the test database and fakes, consent set up with both."""
    google = fakes.gmail.register_oauth_client()
    domain = f"cli{secrets.token_hex(3)}.example"
    tenant = fakes.microsoft.create_mailbox(f"admin@{domain}").credentials
    env = {
        "MAILSYNC_DATA_DIR": str(settings.data_dir),
        "MAILSYNC_DATABASE_URL": settings.resolved_database_url,
        "MAILSYNC_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "MAILSYNC_GOOGLE_CLIENT_ID": google.client_id,
        "MAILSYNC_GOOGLE_CLIENT_SECRET": google.client_secret,
        "MAILSYNC_MICROSOFT_CLIENT_ID": tenant.client_id,
        "MAILSYNC_MICROSOFT_CLIENT_SECRET": tenant.client_secret,
        "MAILSYNC_MICROSOFT_TENANT": tenant.tenant_id,
        **fakes.env(),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    workspace = f"ws-{secrets.token_hex(4)}"
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, workspace)
    yield {"workspace": workspace, "domain": domain}
    get_settings.cache_clear()


def play_browser(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The user's browser: opens the URL and follows the provider's redirect to the CLI."""
    opened: list[str] = []
    trust = ssl.create_default_context(cafile=str(settings.provider_ca_bundle))

    def browse(url: str) -> bool:
        opened.append(url)

        def visit() -> None:
            with httpx.Client(verify=trust, trust_env=False, follow_redirects=True) as client:
                client.get(url)

        threading.Thread(target=visit, daemon=True).start()
        return True

    monkeypatch.setattr(cli_connect, "open_browser", browse)
    return opened


def stored(settings: Settings, workspace: str) -> list[Mailbox]:
    with Session(get_engine(settings.resolved_database_url)) as session:
        return list(session.exec(select(Mailbox).where(Mailbox.workspace_id == workspace)))


@pytest.mark.parametrize("provider", ["gmail", "microsoft"])
def test_oauth_connects_through_a_loopback_redirect(
    cli_env: dict[str, str], settings: Settings, fakes: FakeProviders,
    monkeypatch: pytest.MonkeyPatch, provider: str,
) -> None:  # fmt: skip
    """--oauth prints the authorization URL, opens it, receives the provider's redirect on
    127.0.0.1, and stores the grant for the address the provider names; nothing secret is
    printed and the mailbox syncs."""
    domain = "gmail.example" if provider == "gmail" else cli_env["domain"]
    address = f"cli-{secrets.token_hex(3)}@{domain}"
    fakes.admin(provider).create_mailbox(address, 2)
    opened = play_browser(settings, monkeypatch)
    result = runner.invoke(app, ["mailbox", "connect", provider, "-w", cli_env["workspace"],
                                 "--oauth", "--address", address, "--timeout", "60"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        opened and opened[0] in result.output and "redirect_uri=http%3A%2F%2F127.0.0.1" in opened[0]
    )
    (mailbox,) = stored(settings, cli_env["workspace"])
    assert (mailbox.address, mailbox.status) == (address, "active")
    secret = CredentialBox(settings.fernet_key()).open(mailbox.credentials_encrypted)
    assert secret["refresh_token"] not in result.output and "code=" not in result.output
    assert runtime.sync_now(mailbox.id, "incremental", settings).counts.added == 2


def test_device_code_connects_a_microsoft_mailbox(
    cli_env: dict[str, str], settings: Settings, fakes: FakeProviders,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """--device-code tells the user the page and the code; once they approve there, msal's
    polling gets the grant and the mailbox is connected."""
    address = f"dev-{secrets.token_hex(3)}@{cli_env['domain']}"
    fakes.microsoft.create_mailbox(address, 1)
    told: list[str] = []

    def user(message: str, uri: str, code: str) -> None:
        told.append(message)
        timer = threading.Timer(1.5, fakes.microsoft.approve_device, (code, address))
        timer.daemon = True
        timer.start()

    monkeypatch.setattr(cli_connect, "announce_device_code", user)
    result = runner.invoke(app, ["mailbox", "connect", "microsoft", "-w", cli_env["workspace"],
                                 "--device-code"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert told and "/common/oauth2/deviceauth" in told[0]
    assert [m.address for m in stored(settings, cli_env["workspace"])] == [address]


def test_gmail_device_code_says_why_not(cli_env: dict[str, str]) -> None:
    """Google's device flow cannot grant Gmail scopes: the CLI says so and points to --oauth."""
    result = runner.invoke(
        app, ["mailbox", "connect", "gmail", "-w", cli_env["workspace"], "--device-code"]
    )
    assert result.exit_code == 1
    assert "does not allow Gmail scopes" in result.output and "--oauth" in result.output
