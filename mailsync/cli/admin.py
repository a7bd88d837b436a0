"""Administration commands: the database, the encryption key, workspaces, API keys, mailboxes,
pruning what is past retention."""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from mailsync import db
from mailsync.cli.common import console, err, fail, ready_settings
from mailsync.core import apikeys, workspaces
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import utcnow
from mailsync.errors import CredentialsUnreadableError

workspace_app = typer.Typer(help="Workspaces.", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
mailbox_app = typer.Typer(help="Connected mailboxes.", no_args_is_help=True)
connect_app = typer.Typer(help="Connect a mailbox.", no_args_is_help=True)
db_app = typer.Typer(help="The application database.", no_args_is_help=True)
encryption_app = typer.Typer(help="The encryption key of stored secrets.", no_args_is_help=True)
mailbox_app.add_typer(connect_app, name="connect")


def register(app: typer.Typer) -> None:
    """Add the administration command groups to `app`."""
    app.add_typer(workspace_app, name="workspace")
    app.add_typer(key_app, name="key")
    app.add_typer(mailbox_app, name="mailbox")
    app.add_typer(db_app, name="db")
    app.add_typer(encryption_app, name="encryption")
    app.command("prune")(prune)


def prune(
    prefect: Annotated[
        bool, typer.Option(help="Also Prefect's idle limits and old flow runs.")
    ] = True,
) -> None:
    """Delete now what is past retention, as the daily `prune` deployment does: finished jobs
    and their webhook events older than MAILSYNC_RETENTION_DAYS, expired Idempotency-Key
    records, and (with --prefect) idle per-workspace/per-mailbox limits nobody holds and
    mailsync's terminal flow runs past retention."""
    from mailsync.core.retention import Retention, prune_records
    from mailsync.errors import PrefectUnavailableError
    from mailsync.orchestration import pruning

    settings = ready_settings()
    now, retention = utcnow(), Retention.from_settings(settings)
    counts = prune_records(settings.resolved_database_url, now, retention.records)
    console.print(
        f"records: {counts.jobs} jobs, {counts.events} webhook events, {counts.deliveries}"
        f" deliveries, {counts.attempts} attempts, {counts.idempotency_records}"
        f" idempotency records, {counts.run_leases} forgotten run leases"
    )
    if not prefect:
        return
    try:
        limits, runs = pruning.prune_prefect(
            settings.resolved_prefect_api_url, settings.prefect_client_auth_string(), now, retention
        )
    except PrefectUnavailableError as exc:
        raise fail(f"{exc} (the records above are pruned; retry, or --no-prefect)") from exc
    console.print(f"prefect: {len(limits)} idle limits, {runs} flow runs")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the newest revision."""
    ready_settings()
    console.print("database schema is up to date")


@encryption_app.command("rotate")
def encryption_rotate() -> None:
    """Re-encrypt every stored secret with the first key of MAILSYNC_ENCRYPTION_KEY.

    Set MAILSYNC_ENCRYPTION_KEY="new,old" on every process first; afterwards drop "old".
    """
    from mailsync.db.keyrotation import reencrypt_all, unrotated

    settings = ready_settings()
    box = CredentialBox(settings.fernet_key())
    with db.session_scope(settings.resolved_database_url) as session:
        try:
            report = reencrypt_all(session, box)
        except CredentialsUnreadableError as exc:
            raise fail(str(exc)) from exc
        left = unrotated(session, box)
    for column, count in report.reencrypted.items():
        console.print(f"{column}: {count} re-encrypted")
    if left:
        raise fail(f"{len(left)} values still need an old key (written meanwhile?): run again")
    console.print(f"done: {report.total} values now need only the first key")


_NIGHTLY_HELP = "Rebuild every mailbox with a full sync each night (nightly-full-sync deployment)."


@workspace_app.command("create")
def workspace_create(
    workspace_id: str,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    nightly_full_sync: Annotated[bool, typer.Option(help=_NIGHTLY_HELP)] = False,
) -> None:
    """Create a workspace (no-op when it exists)."""
    settings = ready_settings()
    with db.session_scope(settings.resolved_database_url) as session:
        try:
            workspace = workspaces.create_workspace(
                session, workspace_id, name, nightly_full_sync=nightly_full_sync
            )
        except ValueError as exc:
            raise fail(str(exc)) from exc
        console.print(f"workspace [bold]{workspace.id}[/bold] ready")


@workspace_app.command("update")
def workspace_update(
    workspace_id: str,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    nightly_full_sync: Annotated[bool | None, typer.Option(help=_NIGHTLY_HELP)] = None,
) -> None:
    """Change a workspace's settings (only those given)."""
    settings = ready_settings()
    with db.session_scope(settings.resolved_database_url) as session:
        try:
            workspace = workspaces.update_workspace(
                session, workspace_id, name=name, nightly_full_sync=nightly_full_sync
            )
        except ValueError as exc:
            raise fail(str(exc)) from exc
        nightly = "on" if workspace.nightly_full_sync else "off"
        console.print(f"workspace [bold]{workspace.id}[/bold] updated, nightly full sync {nightly}")


@key_app.command("create")
def key_create(
    workspace: Annotated[str, typer.Option("--workspace", "-w")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            "-s",
            help="Repeat for each scope: write:email, read:email, write:webhooks, "
            "read:webhooks, write:mailboxes, read:mailboxes.",
        ),
    ] = [  # noqa: B006
        "write:email",
        "read:email",
    ],
    name: str = "",
    expires_in_days: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    settings = ready_settings()
    expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    with db.session_scope(settings.resolved_database_url) as session:
        if not workspaces.workspace_exists(session, workspace):
            raise fail(f"workspace {workspace!r} does not exist")
        try:
            key, plaintext = apikeys.create_api_key(
                session, workspace, scope, name=name, expires_at=expires
            )
        except ValueError as exc:
            raise fail(str(exc)) from exc
    err.print(f"key {key.id} ({', '.join(key.scopes)}); store it now, it is not shown again:")
    print(plaintext)


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    """Revoke an API key by its id (key_...)."""
    settings = ready_settings()
    with db.session_scope(settings.resolved_database_url) as session:
        if not apikeys.revoke_api_key(session, key_id):
            raise fail(f"no API key {key_id!r}")
    console.print(f"key {key_id} revoked")


def _read_credentials(env_var: str, file: Path | None) -> dict[str, Any]:
    if file is not None:
        raw = sys.stdin.read() if str(file) == "-" else file.read_text()
    elif os.environ.get(env_var):
        raw = os.environ[env_var]
    else:
        raise fail(f"pass --credentials-file FILE (or -) or set {env_var}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise fail("the credentials are not valid JSON") from exc
    if not isinstance(data, dict):
        raise fail("the credentials must be a JSON object")
    return data


def _connect(provider: str, workspace: str, address: str, file: Path | None) -> None:
    settings = ready_settings()
    credentials = _read_credentials(f"MAILSYNC_{provider.upper()}_CREDENTIALS", file)
    with db.session_scope(settings.resolved_database_url) as session:
        try:
            mailbox, created = workspaces.connect_mailbox(
                session, CredentialBox(settings.fernet_key()), workspace, provider, address,
                credentials,
            )  # fmt: skip
        except ValueError as exc:
            raise fail(str(exc)) from exc
    verb = "connected" if created else "re-connected (index reset)"
    console.print(f"{provider} mailbox {address} {verb} as {mailbox.id}")


_CREDS_HELP = "JSON credentials file, or - for stdin. Never echoed."
_ADDRESS_HELP = "The mailbox's email address (with --oauth: the account to sign in with)."
_OAUTH_HELP = "Ask the user's consent in a browser, redirected back to this machine."
_DEVICE_HELP = "Ask the user's consent with a code typed on another device (Microsoft only)."
_TIMEOUT_HELP = "How long --oauth / --device-code wait for the user."


def _connect_any(
    provider: str,
    workspace: str,
    address: str | None,
    credentials_file: Path | None,
    oauth: bool,
    device_code: bool,
    timeout: int,
) -> None:
    from mailsync.cli.connect import NO_GMAIL_DEVICE_FLOW, connect_by_consent

    if oauth and device_code:
        raise fail("choose one of --oauth and --device-code")
    if provider == "gmail" and device_code:
        raise fail(NO_GMAIL_DEVICE_FLOW)
    if oauth or device_code:
        if credentials_file is not None:
            raise fail("--credentials-file does not go with --oauth or --device-code")
        connect_by_consent(
            ready_settings(), provider, workspace, address, device_code=device_code,
            timeout=timeout,
        )  # fmt: skip
        return
    if address is None:
        raise fail("pass --address (or use --oauth / --device-code)")
    _connect(provider, workspace, address, credentials_file)


@connect_app.command("gmail")
def connect_gmail(
    workspace: Annotated[str, typer.Option("--workspace", "-w")],
    address: Annotated[str | None, typer.Option(help=_ADDRESS_HELP)] = None,
    credentials_file: Annotated[Path | None, typer.Option(help=_CREDS_HELP)] = None,
    oauth: Annotated[bool, typer.Option("--oauth", help=_OAUTH_HELP)] = False,
    device_code: Annotated[bool, typer.Option("--device-code", help=_DEVICE_HELP)] = False,
    timeout: Annotated[int, typer.Option(min=10, help=_TIMEOUT_HELP)] = 300,
) -> None:
    """Connect a Gmail mailbox: --oauth (the user's consent), or a credentials JSON (OAuth
    refresh token or service account with subject) from --credentials-file or
    MAILSYNC_GMAIL_CREDENTIALS."""
    _connect_any("gmail", workspace, address, credentials_file, oauth, device_code, timeout)


@connect_app.command("microsoft")
def connect_microsoft(
    workspace: Annotated[str, typer.Option("--workspace", "-w")],
    address: Annotated[str | None, typer.Option(help=_ADDRESS_HELP)] = None,
    credentials_file: Annotated[Path | None, typer.Option(help=_CREDS_HELP)] = None,
    oauth: Annotated[bool, typer.Option("--oauth", help=_OAUTH_HELP)] = False,
    device_code: Annotated[bool, typer.Option("--device-code", help=_DEVICE_HELP)] = False,
    timeout: Annotated[int, typer.Option(min=10, help=_TIMEOUT_HELP)] = 300,
) -> None:
    """Connect a Microsoft 365 mailbox: --oauth or --device-code (the user's consent), or a
    credentials JSON (client credentials or delegated refresh token) from --credentials-file
    or MAILSYNC_MICROSOFT_CREDENTIALS."""
    _connect_any("microsoft", workspace, address, credentials_file, oauth, device_code, timeout)
