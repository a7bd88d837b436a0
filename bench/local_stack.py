"""The default local stack, started for a benchmark: Prefect server, worker, API, fakes, a tenant.

The same pieces `mailsync up` starts (SQLite app database, a local Prefect server with the
deployments registered, warm or stock process workers), with the API served by uvicorn in its own
process so the benchmark's client does not share an interpreter with it. The Prefect server runs
on SQLite as `mailsync up` does, or on a fresh PostgreSQL database (README, "Going beyond one
machine") with `prefect_db="postgresql"`.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from cryptography.fernet import Fernet
from prefect.client.orchestration import SyncPrefectClient
from pydantic import SecretStr

from bench import harness
from mailsync import db
from mailsync.core import apikeys, workspaces
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Workspace
from mailsync.devstack.fakes import Fakes
from mailsync.devstack.processes import free_port
from mailsync.devstack.stack import ApiSpec, StackSpec, start_stack
from mailsync.fakes.client import GmailAdmin, MicrosoftAdmin, admin_client
from mailsync.settings import Settings

WORKSPACE = "bench"
UNLIMITED = str(10**7)  # the benchmarks measure speed, not the quotas
POSTGRES_ADMIN_URL = harness.POSTGRES_ADMIN_URL


@dataclass
class LocalStack:
    api_url: str
    prefect_api_url: str
    settings: Settings
    fakes: Fakes
    key: str
    workdir: Path
    prefect_auth_string: str = field(repr=False, default="")

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def prefect(self) -> SyncPrefectClient:
        """A client of the stack's Prefect server (which refuses calls without its auth)."""
        return SyncPrefectClient(self.prefect_api_url, auth_string=self.prefect_auth_string)

    def admin(self, provider: str) -> GmailAdmin | MicrosoftAdmin:
        """A typed admin client of the fake for `provider`, to use in a `with` block."""
        base = self.fakes.gmail_url if provider == "gmail" else self.fakes.microsoft_url
        return admin_client(provider, base, self.fakes.ca_path, timeout=600)

    def connect(
        self, provider: str, address: str, messages: int, workspace: str = WORKSPACE
    ) -> str:
        """A new mailbox at the fake, connected to `workspace` (created if new); its id."""
        with self.admin(provider) as admin:
            credentials = admin.create_mailbox(address, messages).provider_credentials()
        box = CredentialBox(self.settings.fernet_key())
        with db.session_scope(self.settings.resolved_database_url) as session:
            if session.get(Workspace, workspace) is None:
                workspaces.create_workspace(session, workspace)
            mailbox, _ = workspaces.connect_mailbox(
                session, box, workspace, provider, address, credentials
            )
            return mailbox.id

    def key_for(self, workspace: str) -> dict[str, str]:
        """Auth headers with a new write+read key of `workspace` (created if new)."""
        with db.session_scope(self.settings.resolved_database_url) as session:
            if session.get(Workspace, workspace) is None:
                workspaces.create_workspace(session, workspace)
            key = apikeys.create_api_key(session, workspace, ["write:email", "read:email"])[1]
        return {"Authorization": f"Bearer {key}"}


async def _postgres(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def prefect_database(kind: str) -> Iterator[dict[str, str]]:
    """The Prefect server's database settings: its default SQLite file, or a fresh PostgreSQL
    database (dropped afterwards) as tests/drills/test_scale_out.py gives it."""
    if kind == "sqlite":
        yield {}
        return
    if kind != "postgresql":
        raise ValueError(f"unknown Prefect database {kind!r}")
    name = f"mailsync_bench_{secrets.token_hex(4)}"
    asyncio.run(_postgres(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].split("://", 1)[1]
    try:
        yield {"PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{base}/{name}"}
    finally:
        asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def local_stack(
    workers: int = 1,
    api_app: str = "mailsync.api.app:create_app",
    env: dict[str, str] | None = None,
    prefect: dict[str, str] | None = None,
    worker_type: str = "warm",
    worker_limit: int | None = None,
    prefect_db: str = "sqlite",
    api_port: int | None = None,
) -> Iterator[LocalStack]:
    """`api_port`: the API's port, when a benchmark must know its URL before the stack
    starts (the push URL the fakes call)."""
    with (
        tempfile.TemporaryDirectory(prefix="mailsync-bench-") as tmp,
        harness.running_fakes(Path(tmp)) as fakes,
        prefect_database(prefect_db) as prefect_db_env,
    ):
        workdir = Path(tmp)
        settings_env = {
            "MAILSYNC_DATA_DIR": str(workdir / "data"),
            "MAILSYNC_DATABASE_URL": f"sqlite:///{workdir / 'mailsync.db'}",
            "MAILSYNC_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "MAILSYNC_GMAIL_QUOTA_UNITS_PER_MINUTE": UNLIMITED,
            "MAILSYNC_SYNC_QUOTA": UNLIMITED,
            "MAILSYNC_REQUEST_QUOTA_PER_MINUTE": UNLIMITED,
            "MAILSYNC_ADDRESS_QUOTA_PER_MINUTE": UNLIMITED,
            **(env or {}),
        }
        settings = Settings.model_validate(
            {
                k.removeprefix("MAILSYNC_").lower(): v
                for k, v in {**fakes.env(), **settings_env}.items()
            }
        )
        db.upgrade(settings.resolved_database_url)
        with db.session_scope(settings.resolved_database_url) as session:
            workspaces.create_workspace(session, WORKSPACE)
            scopes = ["write:email", "read:email"]
            key = apikeys.create_api_key(session, WORKSPACE, scopes)[1]
        spec = StackSpec(
            workdir=workdir,
            data_dir=settings.data_dir,
            database_url=settings.resolved_database_url,
            prefect_port=free_port(),
            prefect_settings={**prefect_db_env, **(prefect or {})},
            schedules=False,
            work_pool=settings.work_pool,
            workers=workers,
            worker_type=worker_type,
            worker_limit=worker_limit,
            api=ApiSpec(settings, api_port or free_port(), api_app),
            fakes=fakes,
            env=settings_env,
        )
        with start_stack(spec) as running:
            assert running.api_url is not None
            auth = running.prefect_auth_string or ""
            update = {"prefect_api_url": running.prefect_api_url}
            settings = settings.model_copy(
                update={**update, "prefect_auth_string": SecretStr(auth)}
            )
            yield LocalStack(
                running.api_url, running.prefect_api_url, settings, fakes, key, workdir, auth
            )


def job(stack: LocalStack, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stack.api_url}/v1/email/sync/{job_id}", headers=stack.auth())
    data: dict[str, Any] = response.raise_for_status().json()["data"]
    return data
