"""The fakes over HTTPS, test settings pointing at them, and a real Prefect stack."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from prefect.client.orchestration import SyncPrefectClient
from pydantic import SecretStr

from mailsync.devstack.fakes import Fakes, fakes_in_threads
from mailsync.devstack.processes import Stack, free_port
from mailsync.devstack.stack import StackSpec, start_stack
from mailsync.fakes.client import GmailAdmin, MicrosoftAdmin
from mailsync.fakes.tls import FakeTLS, ensure_tls
from mailsync.providers import pools
from mailsync.settings import Settings

ENCRYPTION_KEY = Fernet.generate_key().decode()


# The fakes enforce no quota unless a test asks; pacing to Gmail's real one would only slow
# the suite down (the pacer has tests of its own).
FAST_QUOTA = 10_000_000


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> FakeTLS:
    return ensure_tls(tmp_path_factory.mktemp("tls"))


@dataclass(frozen=True)
class FakeProviders(Fakes):
    """The running fakes plus their typed admin clients (mailsync.fakes.client), one each,
    made with the instance and closed by close()."""

    gmail: GmailAdmin = field(init=False, repr=False, compare=False)
    microsoft: MicrosoftAdmin = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen: the clients are set the way dataclasses sets fields of frozen instances.
        object.__setattr__(self, "gmail", GmailAdmin(self.gmail_url, self.ca_path))
        object.__setattr__(self, "microsoft", MicrosoftAdmin(self.microsoft_url, self.ca_path))

    def admin(self, provider: str) -> GmailAdmin | MicrosoftAdmin:
        """The admin client of the fake for `provider` ("gmail" or "microsoft")."""
        clients: dict[str, GmailAdmin | MicrosoftAdmin] = {
            "gmail": self.gmail,
            "microsoft": self.microsoft,
        }
        if provider not in clients:
            raise ValueError(f"no fake for provider {provider!r}")
        return clients[provider]

    def close(self) -> None:
        self.gmail.close()
        self.microsoft.close()


@pytest.fixture(scope="session")
def fakes(tls: FakeTLS) -> Iterator[FakeProviders]:
    """Fake Gmail and Microsoft over real HTTPS with a generated CA."""
    with fakes_in_threads(tls, seed_messages=40) as running:
        providers = FakeProviders(running.gmail_url, running.microsoft_url, running.ca_path)
        try:
            yield providers
        finally:
            # Pooled connections (the admin clients' too) would keep the servers' shutdown
            # waiting on them.
            providers.close()
            pools.close_all()


def make_settings(data_dir: Path, database_url: str, fakes: Fakes, **extra: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        encryption_key=ENCRYPTION_KEY,
        google_token_uri=f"{fakes.gmail_url}/token",
        google_auth_uri=f"{fakes.gmail_url}/o/oauth2/v2/auth",
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
