"""A bare Prefect server (no worker) for the registration and pruning tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient

from mailsync.devstack.processes import free_port
from mailsync.devstack.stack import StackSpec, start_stack


@dataclass(frozen=True)
class BareServer:
    api_url: str
    env: dict[str, str]  # what a Prefect CLI process needs to talk to it (its auth string too)
    auth_string: str = field(repr=False)

    def client(self) -> SyncPrefectClient:
        return SyncPrefectClient(self.api_url, auth_string=self.auth_string)


@contextmanager
def prefect_server(workdir: Path, *, deployments: bool) -> Iterator[BareServer]:
    """A stack of the Prefect server alone (no worker, no API), with or without mailsync's
    deployments registered (their schedules off), until the block exits."""
    spec = StackSpec(
        workdir=workdir,
        prefect_port=free_port(),
        deployments=deployments,
        schedules=False,
        workers=0,
    )
    with start_stack(spec) as running:
        assert running.prefect_auth_string is not None
        yield BareServer(
            running.prefect_api_url, running.processes.env, running.prefect_auth_string
        )


@pytest.fixture(scope="module")
def bare_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BareServer]:
    """Only the Prefect server of a stack: nothing registered, no worker, no API."""
    with prefect_server(tmp_path_factory.mktemp("prefect-bare"), deployments=False) as server:
        yield server
