"""Crash and restart drills for the full-sync slot: a dead run or a restarted Prefect server
never leaves a stuck lock."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient

from mailsync.admission import full_sync_limit
from mailsync.fakes.server import free_port
from mailsync.limits import PrefectLimits, Refusal
from mailsync.stack import Stack, prefect_env, start_prefect_server

pytestmark = pytest.mark.integration


def flow_run_pids(flow_run_id: str) -> list[int]:
    """Processes executing a flow run: the process worker sets PREFECT__FLOW_RUN_ID on them."""
    wanted = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_prefect_restart_leaves_no_stuck_full_sync_slot(tmp_path: Path) -> None:
    """With the filesystem lease storage `mailsync up` configures, a lease taken before a
    Prefect server restart survives it and then expires: the slot frees within the lease time
    plus Prefect's reclaim loop (seen: the in-memory default keeps it taken forever). 60 s is
    the shortest lease Prefect grants, so this drill cannot be made shorter."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    stack = Stack(tmp_path / "logs", {**os.environ, **prefect_env(tmp_path / "home", api_url)})
    spec = full_sync_limit("drill", "gmail")
    try:
        start_prefect_server(stack, port)
        with SyncPrefectClient(api_url) as client:
            taken = PrefectLimits(lambda: client).take([spec], 60)
            assert isinstance(taken, str)
        stack.stop()
        restarted = time.monotonic()
        start_prefect_server(stack, port)
        with SyncPrefectClient(api_url) as client:
            limits = PrefectLimits(lambda: client)
            assert isinstance(limits.take([spec], 60), Refusal), "the lease must survive"
            deadline = time.monotonic() + 100
            while time.monotonic() < deadline:
                taken = limits.take([spec], 60)
                if isinstance(taken, str):
                    break
                time.sleep(2)
            assert isinstance(taken, str), "the slot stayed taken after the lease ended"
            assert time.monotonic() - restarted < 90
    finally:
        stack.stop()
