"""A bare Prefect server (no worker) for the deployment-registration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailsync.devstack.processes import Stack, prefect_env, start_prefect_server
from mailsync.fakes.server import free_port


@dataclass(frozen=True)
class BareServer:
    api_url: str
    env: dict[str, str]  # what a Prefect CLI process needs to talk to it


@pytest.fixture(scope="module")
def bare_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BareServer]:
    home: Path = tmp_path_factory.mktemp("prefect-bare")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **prefect_env(home, api_url)}
    stack = Stack(home / "logs", env)
    try:
        start_prefect_server(stack, port)
        yield BareServer(api_url, env)
    finally:
        stack.stop()
