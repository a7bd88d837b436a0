"""Shared fixtures: SQLite and PostgreSQL databases, the fakes over HTTPS, a real Prefect stack."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet
from prefect.client.orchestration import SyncPrefectClient
from pydantic import SecretStr

from mailsync import db
from mailsync.devstack.fakes import Fakes, fakes_in_threads
from mailsync.devstack.processes import Stack, free_port
from mailsync.devstack.stack import StackSpec, start_stack
from mailsync.fakes.tls import FakeTLS, ensure_tls
from mailsync.providers import pools
from mailsync.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get(
    "MAILSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ENCRYPTION_KEY = Fernet.generate_key().decode()
# The fakes enforce no quota unless a test asks; pacing to Gmail's real one would only slow
# the suite down (the pacer has tests of its own).
FAST_QUOTA = 10_000_000


def _postgres_problem() -> str | None:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {str(exc).splitlines()[0]}"


PG_PROBLEM = _postgres_problem()


# tryfirst: pytest-xdist turns `xdist_group` marks into node ids in its own hook of this name,
# which runs before a conftest's (it is registered later); without it the marks added here
# came too late and every worker built both databases' stacks (seen: six instead of two).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.only_database("postgresql")`: a test whose subject does not depend on the
    application database runs on that one only (the suite's time budget), deselected for the
    other rather than skipped. Tests on a shared Prefect stack are grouped by database."""
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("only_database")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if marker and "database_url" in params and params["database_url"] not in marker.args:
            dropped.append(item)
            continue
        kept.append(item)
        if "database_url" in params:
            # Under `--dist loadgroup` (pytest-xdist) every test on one database runs in one
            # worker. `database_url` is a session fixture with two params: a worker that got
            # tests of both would switch between them, and each switch tears down and starts
            # again everything built on it, the ~40 s Prefect stack included.
            item.add_marker(pytest.mark.xdist_group(f"db-{params['database_url']}"))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_report_header(config: pytest.Config) -> str:
    if PG_PROBLEM:
        return f"postgresql: tests SKIPPED ({PG_PROBLEM})"
    return f"postgresql: {POSTGRES_ADMIN_URL}"


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


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> FakeTLS:
    return ensure_tls(tmp_path_factory.mktemp("tls"))


@dataclass(frozen=True)
class FakeProviders(Fakes):
    """The running fakes plus helpers to drive their admin surface."""

    def admin(self, provider: str) -> httpx.Client:
        base = self.gmail_url if provider == "gmail" else self.microsoft_url
        return httpx.Client(base_url=base, verify=str(self.ca_path), trust_env=False, timeout=30)

    def call(self, provider: str, method: str, path: str, **kwargs: Any) -> Any:
        with self.admin(provider) as client:
            response = client.request(method, path, **kwargs)
            response.raise_for_status()
            return response.json() if response.content else None

    def account(self, provider: str, address: str, messages: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"address": address}
        if messages is not None:
            body["messages"] = messages
        result: dict[str, Any] = self.call(provider, "POST", "/_admin/mailboxes", json=body)
        return result

    def ids(self, provider: str, address: str) -> set[str]:
        return set(self.call(provider, "GET", f"/_admin/mailboxes/{address}/messages")["ids"])

    def stats(self, provider: str) -> dict[str, int]:
        result: dict[str, int] = self.call(provider, "GET", "/_admin/stats")["requests"]
        return result

    def reset_stats(self, provider: str) -> None:
        self.call(provider, "POST", "/_admin/stats/reset")


@pytest.fixture(scope="session")
def fakes(tls: FakeTLS) -> Iterator[FakeProviders]:
    """Fake Gmail and Microsoft over real HTTPS with a generated CA."""
    with fakes_in_threads(tls, seed_messages=40) as running:
        try:
            yield FakeProviders(running.gmail_url, running.microsoft_url, running.ca_path)
        finally:
            # Pooled connections would keep the servers' shutdown waiting on them.
            pools.close_all()


def make_settings(data_dir: Path, database_url: str, fakes: Fakes, **extra: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        encryption_key=ENCRYPTION_KEY,
        google_token_uri=f"{fakes.gmail_url}/token",
        gmail_api_url=f"{fakes.gmail_url}/",
        microsoft_authority_host=fakes.microsoft_url,
        graph_api_url=f"{fakes.microsoft_url}/v1.0",
        provider_ca_bundle=fakes.ca_path,
        gmail_quota_units_per_minute=FAST_QUOTA,
        **extra,
    )


@pytest.fixture(scope="session")
def settings(
    database_url: str, fakes: FakeProviders, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return make_settings(tmp_path_factory.mktemp("data"), database_url, fakes)


@dataclass
class PrefectStack:
    api_url: str
    stack: Stack
    settings: Settings  # prefect_api_url and prefect_auth_string: this stack's
    auth_string: str  # the Prefect API refuses a call without it (401)

    def client(self, **kwargs: Any) -> SyncPrefectClient:
        """A Prefect client of this stack (one built from the URL alone sends no auth)."""
        return SyncPrefectClient(self.api_url, auth_string=self.auth_string, **kwargs)


def stack_spec(workdir: Path, settings: Settings, fakes: Fakes, **extra: Any) -> StackSpec:
    """A test stack (devstack/stack.py) whose flow runs use the same database, encryption key
    and fakes as the test: a Prefect server on a free port, the deployments without their
    schedules (no refresh round runs behind a test), one warm worker, no API process."""
    spec = StackSpec(
        workdir=workdir,
        data_dir=settings.data_dir,
        database_url=settings.resolved_database_url,
        prefect_port=free_port(),
        schedules=False,
        fakes=fakes,
        env={
            "MAILSYNC_ENCRYPTION_KEY": ENCRYPTION_KEY,
            "MAILSYNC_GMAIL_QUOTA_UNITS_PER_MINUTE": str(FAST_QUOTA),
        },
    )
    return replace(spec, **extra)


@pytest.fixture(scope="session")
def prefect_stack(
    settings: Settings, fakes: FakeProviders, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectStack]:
    """A real Prefect server, the deployments registered, and one worker.

    The worker's flow runs use the same database, encryption key and fakes as the test.
    """
    spec = stack_spec(tmp_path_factory.mktemp("prefect"), settings, fakes)
    with start_stack(spec) as running:
        api_url, auth = running.prefect_api_url, running.prefect_auth_string
        assert auth is not None  # a server the stack starts always has one
        update = {"prefect_api_url": api_url, "prefect_auth_string": SecretStr(auth)}
        yield PrefectStack(api_url, running.processes, settings.model_copy(update=update), auth)
