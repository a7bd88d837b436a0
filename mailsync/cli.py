"""The `mailsync` command: run the local stack, administer workspaces, keys and mailboxes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table
from sqlmodel import col, select

from mailsync import db
from mailsync.core import apikeys, workspaces
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import JobStatus, SyncJob, iso, utcnow
from mailsync.errors import NoMailboxError, PrefectUnavailableError, UnknownWorkspaceError
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings, get_settings

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_show_locals=False)
workspace_app = typer.Typer(help="Workspaces.", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
mailbox_app = typer.Typer(help="Connected mailboxes.", no_args_is_help=True)
connect_app = typer.Typer(help="Connect a mailbox.", no_args_is_help=True)
db_app = typer.Typer(help="The application database.", no_args_is_help=True)
encryption_app = typer.Typer(help="The encryption key of stored secrets.", no_args_is_help=True)
job_app = typer.Typer(help="One sync job.", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
app.add_typer(key_app, name="key")
app.add_typer(mailbox_app, name="mailbox")
mailbox_app.add_typer(connect_app, name="connect")
app.add_typer(db_app, name="db")
app.add_typer(encryption_app, name="encryption")
app.add_typer(job_app, name="job")

console = Console()
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def _ready_settings() -> Settings:
    settings = get_settings()
    db.upgrade(settings.resolved_database_url)
    return settings


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the newest revision."""
    _ready_settings()
    console.print("database schema is up to date")


@encryption_app.command("rotate")
def encryption_rotate() -> None:
    """Re-encrypt every stored secret with the first key of MAILSYNC_ENCRYPTION_KEY.

    Set MAILSYNC_ENCRYPTION_KEY="new,old" on every process first; afterwards drop "old".
    """
    from mailsync.db.keyrotation import reencrypt_all, unrotated
    from mailsync.errors import CredentialsUnreadableError

    settings = _ready_settings()
    box = CredentialBox(settings.fernet_key())
    with db.session_scope(settings.resolved_database_url) as session:
        try:
            report = reencrypt_all(session, box)
        except CredentialsUnreadableError as exc:
            raise _fail(str(exc)) from exc
        left = unrotated(session, box)
    for column, count in report.reencrypted.items():
        console.print(f"{column}: {count} re-encrypted")
    if left:
        raise _fail(f"{len(left)} values still need an old key (written meanwhile?): run again")
    console.print(f"done: {report.total} values now need only the first key")


_NIGHTLY_HELP = "Rebuild every mailbox with a full sync each night (nightly-full-sync deployment)."


@workspace_app.command("create")
def workspace_create(
    workspace_id: str,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    nightly_full_sync: Annotated[bool, typer.Option(help=_NIGHTLY_HELP)] = False,
) -> None:
    """Create a workspace (no-op when it exists)."""
    settings = _ready_settings()
    with db.session_scope(settings.resolved_database_url) as session:
        try:
            workspace = workspaces.create_workspace(
                session, workspace_id, name, nightly_full_sync=nightly_full_sync
            )
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        console.print(f"workspace [bold]{workspace.id}[/bold] ready")


@workspace_app.command("update")
def workspace_update(
    workspace_id: str,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    nightly_full_sync: Annotated[bool | None, typer.Option(help=_NIGHTLY_HELP)] = None,
) -> None:
    """Change a workspace's settings (only those given)."""
    settings = _ready_settings()
    with db.session_scope(settings.resolved_database_url) as session:
        try:
            workspace = workspaces.update_workspace(
                session, workspace_id, name=name, nightly_full_sync=nightly_full_sync
            )
        except ValueError as exc:
            raise _fail(str(exc)) from exc
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
            help="Repeat for each scope: write:email, read:email, write:webhooks, read:webhooks.",
        ),
    ] = [  # noqa: B006
        "write:email",
        "read:email",
    ],
    name: str = "",
    expires_in_days: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    settings = _ready_settings()
    expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    with db.session_scope(settings.resolved_database_url) as session:
        if not workspaces.workspace_exists(session, workspace):
            raise _fail(f"workspace {workspace!r} does not exist")
        try:
            key, plaintext = apikeys.create_api_key(
                session, workspace, scope, name=name, expires_at=expires
            )
        except ValueError as exc:
            raise _fail(str(exc)) from exc
    err.print(f"key {key.id} ({', '.join(key.scopes)}); store it now, it is not shown again:")
    print(plaintext)


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    """Revoke an API key by its id (key_...)."""
    settings = _ready_settings()
    with db.session_scope(settings.resolved_database_url) as session:
        if not apikeys.revoke_api_key(session, key_id):
            raise _fail(f"no API key {key_id!r}")
    console.print(f"key {key_id} revoked")


def _read_credentials(env_var: str, file: Path | None) -> dict[str, Any]:
    if file is not None:
        raw = sys.stdin.read() if str(file) == "-" else file.read_text()
    elif os.environ.get(env_var):
        raw = os.environ[env_var]
    else:
        raise _fail(f"pass --credentials-file FILE (or -) or set {env_var}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _fail("the credentials are not valid JSON") from exc
    if not isinstance(data, dict):
        raise _fail("the credentials must be a JSON object")
    return data


def _connect(provider: str, workspace: str, address: str, file: Path | None) -> None:
    settings = _ready_settings()
    credentials = _read_credentials(f"MAILSYNC_{provider.upper()}_CREDENTIALS", file)
    with db.session_scope(settings.resolved_database_url) as session:
        try:
            mailbox, created = workspaces.connect_mailbox(
                session, CredentialBox(settings.fernet_key()), workspace, provider, address,
                credentials,
            )  # fmt: skip
        except ValueError as exc:
            raise _fail(str(exc)) from exc
    verb = "connected" if created else "re-connected (index reset)"
    console.print(f"{provider} mailbox {address} {verb} as {mailbox.id}")


_CREDS_HELP = "JSON credentials file, or - for stdin. Never echoed."


@connect_app.command("gmail")
def connect_gmail(
    workspace: Annotated[str, typer.Option("--workspace", "-w")],
    address: Annotated[str, typer.Option(help="The mailbox's email address.")],
    credentials_file: Annotated[Path | None, typer.Option(help=_CREDS_HELP)] = None,
) -> None:
    """Connect a Gmail mailbox (OAuth refresh token or service account with subject).

    Without --credentials-file the JSON is read from MAILSYNC_GMAIL_CREDENTIALS.
    """
    _connect("gmail", workspace, address, credentials_file)


@connect_app.command("microsoft")
def connect_microsoft(
    workspace: Annotated[str, typer.Option("--workspace", "-w")],
    address: Annotated[str, typer.Option(help="The mailbox's email address.")],
    credentials_file: Annotated[Path | None, typer.Option(help=_CREDS_HELP)] = None,
) -> None:
    """Connect a Microsoft 365 mailbox (client credentials or delegated refresh token).

    Without --credentials-file the JSON is read from MAILSYNC_MICROSOFT_CREDENTIALS.
    """
    _connect("microsoft", workspace, address, credentials_file)


@app.command()
def sync(
    workspace: Annotated[str, typer.Option("--workspace", "-w")],
    mode: Annotated[str, typer.Option(help="incremental or full")] = "incremental",
    provider: Annotated[str | None, typer.Option(help="gmail or microsoft")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
) -> None:
    """Trigger a sync job, as the API does."""
    if mode not in ("incremental", "full"):
        raise _fail("--mode must be incremental or full")
    if provider not in (None, "gmail", "microsoft"):
        raise _fail("--provider must be gmail or microsoft")
    settings = _ready_settings()
    orchestrator = Orchestrator(settings.resolved_prefect_api_url, settings)
    with db.session_scope(settings.resolved_database_url) as session:
        try:
            job = orchestrator.trigger(session, workspace, mode, provider, trigger="cli")
        except (NoMailboxError, UnknownWorkspaceError) as exc:
            raise _fail(str(exc)) from exc
        except PrefectUnavailableError as exc:
            raise _fail(f"{exc}; is `mailsync up` running?") from exc
    console.print(f"queued {job.id}")
    if wait:
        job = follow(settings, orchestrator, job.id)
        if job.status == JobStatus.failed:
            raise typer.Exit(1)


def follow(settings: Settings, orchestrator: Orchestrator, job_id: str) -> SyncJob:
    """Print status changes of a job until it ends."""
    last = ""
    with console.status(f"{job_id}: queued") as status:
        while True:
            with db.session_scope(settings.resolved_database_url) as session:
                job = session.get(SyncJob, job_id)
                assert job is not None
                orchestrator.refresh(session, job)
            if job.status != last:
                console.print(f"{job_id}: {job.status}")
                last = job.status
            status.update(f"{job_id}: {job.status}")
            if JobStatus(job.status).terminal:
                break
            time.sleep(0.5)
    counts = ", ".join(f"{k.removeprefix('messages_')} {v}" for k, v in job.counts.items())
    if job.error_code:
        console.print(f"[red]failed[/red] {job.error_code}: {job.error_message}")
    else:
        console.print(f"[green]completed[/green] messages {counts}")
    return job


@job_app.command("fail")
def job_fail(
    job_id: str,
    reason: Annotated[str, typer.Option(help="Why; recorded in the job's error message.")],
) -> None:
    """Fail a job that is stuck open and give back its full-sync slot (its provider then
    accepts syncs again). A run still working on it is not stopped: cancel it in the Prefect
    UI; whatever it records later is refused (a job ends once)."""
    settings = _ready_settings()
    orchestrator = Orchestrator(settings.resolved_prefect_api_url, settings)
    try:
        with db.session_scope(settings.resolved_database_url) as session:
            job = session.get(SyncJob, job_id)
            if job is None:
                raise _fail(f"no job {job_id}")
            if not orchestrator.fail_job(
                session, job, "job_failed", f"failed by an administrator: {reason}"
            ):
                raise _fail(f"job {job_id} already ended ({job.status})")
    finally:
        orchestrator.close()
    console.print(f"{job_id}: failed")


@app.command()
def jobs(
    workspace: Annotated[str | None, typer.Option("--workspace", "-w")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """A table of recent sync jobs."""
    settings = _ready_settings()
    # Job ids are what people copy from here: never shortened, however narrow the terminal.
    job_column = Column("job", no_wrap=True, min_width=len("sync_") + 26)
    table = Table(
        job_column, "workspace", "mode", "providers", "status", "queued", "finished", "counts"
    )
    with db.session_scope(settings.resolved_database_url) as session:
        query = select(SyncJob).order_by(col(SyncJob.queued_at).desc()).limit(limit)
        if workspace:
            query = query.where(SyncJob.workspace_id == workspace)
        for job in session.exec(query):
            counts = " ".join(f"{k.removeprefix('messages_')}={v}" for k, v in job.counts.items())
            table.add_row(
                job.id, job.workspace_id, job.mode, ",".join(job.providers), job.status,
                iso(job.queued_at), iso(job.finished_at) or "", counts or job.error_code or "",
            )  # fmt: skip
    Console().print(table)  # sized to the terminal (COLUMNS) of this invocation


@app.command()
def fakes(
    gmail_port: int = 8101,
    microsoft_port: int = 8102,
    seed_messages: int = 3000,
    tls_dir: Path = Path(".data/fakes-tls"),
) -> None:
    """Serve the fake Gmail and Microsoft providers over HTTPS (for demos and tests)."""
    from mailsync.fakes import gmail, microsoft
    from mailsync.fakes.server import serve_forever
    from mailsync.fakes.tls import ensure_tls

    tls = ensure_tls(tls_dir)
    serve_forever(
        [
            (gmail.create_app(seed_messages=seed_messages), gmail_port),
            (microsoft.create_app(seed_messages=seed_messages), microsoft_port),
        ],
        tls,
    )


class WorkerType(StrEnum):
    """`mailsync up --worker-type` (README, "Workers")."""

    warm = "warm"
    process = "process"


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Also run the fake providers and a demo.")] = False,
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Prefect workers.")] = 1,
    seed_messages: Annotated[int, typer.Option(help="Demo messages per mailbox.")] = 3000,
    worker_type: Annotated[
        WorkerType,
        typer.Option(
            help="warm: fork runs from a pre-warmed parent; process: Prefect's stock worker."
        ),
    ] = WorkerType.warm,
) -> None:
    """Run the whole service on this machine until Ctrl-C."""
    from mailsync.devstack.up import run_stack

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    run_stack(
        get_settings(),
        demo=demo,
        port=port,
        workers=workers,
        seed_messages=seed_messages,
        worker_type=worker_type.value,
    )


if __name__ == "__main__":
    app()
