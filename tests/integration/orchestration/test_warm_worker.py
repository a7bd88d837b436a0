"""The warm worker on a real Prefect stack: a forked run is a complete Prefect run."""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.states import Cancelling

from mailsync.devstack.processes import (
    PROJECT_DIR,
    Stack,
    start_worker,
    wait_for_workers,
    worker_name,
)
from tests.support.stack import PrefectStack
from tests.support.waiting import eventually

# The probe flow touches no application database: one of the two stacks is enough (the
# suite's time budget; the sync flows run warm on both databases in the other tests).
pytestmark = [pytest.mark.integration, pytest.mark.only_database("postgresql")]

POOL = "warm-tests"
POLL_SECONDS = 60
ENTRYPOINT = "tests/integration/orchestration/probe_flow.py:probe"


@dataclass
class Probe:
    client: SyncPrefectClient
    deployments: dict[str, str]
    tmp: Path

    def start(self, deployment: str, sleep: float = 0.0) -> tuple[FlowRun, Path]:
        report = self.tmp / f"{uuid.uuid4()}.json"
        run = self.client.create_flow_run_from_deployment(
            uuid.UUID(self.deployments[deployment]),
            parameters={"report": str(report), "sleep": sleep},
        )
        return run, report

    def final(self, run: FlowRun, timeout: float = 90) -> FlowRun:
        def probe() -> FlowRun | None:
            current = self.client.read_flow_run(run.id)
            return current if current.state and current.state.is_final() else None

        return eventually(probe, f"flow run {run.id} to end", timeout)

    def report(self, path: Path) -> dict[str, Any]:
        eventually(lambda: path.exists() and path.stat().st_size > 0, f"the report {path.name}")
        data: dict[str, Any] = json.loads(path.read_text())
        return data


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.fixture(scope="module")
def probe(prefect_stack: PrefectStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probe]:
    """A warm worker on a pool of its own, with the probe flow preloaded, and three
    deployments of it: warm, with an explicit command, and with a flow it did not preload."""
    tmp = tmp_path_factory.mktemp("warm")
    stack = Stack(tmp / "logs", prefect_stack.stack.env)
    client = prefect_stack.client()
    client.__enter__()
    try:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        pull = [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $MAILSYNC_PROJECT_DIR }}"
                }
            }
        ]
        env = {
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
            "MAILSYNC_PROBE": "job-env",
            "MAILSYNC_REFRESH_CONCURRENCY": "3",
        }
        specs = {
            "warm": (ENTRYPOINT, "warm-probe", {"env": env}),
            "command": (
                ENTRYPOINT,
                "warm-probe",
                {"env": env, "command": f"{sys.executable} -m prefect.engine"},
            ),
            "other": (
                "tests/integration/orchestration/probe_flow.py:other_probe",
                "warm-probe-other",
                {"env": env},
            ),
        }
        deployments = {}
        for name, (entrypoint, flow_name, job_variables) in specs.items():
            flow_id = client.create_flow_from_name(flow_name)
            deployments[name] = str(
                client.create_deployment(
                    flow_id=flow_id,
                    name=name,
                    entrypoint=entrypoint,
                    tags=["warm-test"],
                    work_pool_name=POOL,
                    job_variables=job_variables,
                    path=str(PROJECT_DIR),
                    pull_steps=pull,
                )
            )
        # Polls once a minute: runs are picked up on Prefect's Scheduled events.
        extra_env = {
            "MAILSYNC_WARM_EXTRA_ENTRYPOINTS": ENTRYPOINT,
            "PREFECT_WORKER_QUERY_SECONDS": str(POLL_SECONDS),
        }
        start_worker(stack, POOL, 9, extra_env=extra_env)
        wait_for_workers(
            stack, prefect_stack.api_url, prefect_stack.auth_string, POOL, [worker_name(9)]
        )
        yield Probe(client, deployments, tmp)
    finally:
        stack.stop()
        client.__exit__(None, None, None)


def test_a_warm_run_is_a_complete_prefect_run(probe: Probe) -> None:
    """A run forked from the warm parent gets what `python -m prefect.engine` gets (job env,
    Prefect's and mailsync's settings re-read, PREFECT__FLOW_RUN_ID, argv, the pull step's
    cwd, the API URL) and shows in Prefect with its name, tags, logs and task runs; a task
    retry still happens."""
    run, report_path = probe.start("warm")
    final = probe.final(run)
    assert final.state is not None and final.state.is_completed(), final.state
    report = probe.report(report_path)
    assert "mailsync.orchestration.zygote" in cmdline(report["ppid"]), "not forked warm"
    assert report["cwd"] == str(PROJECT_DIR)
    assert report["env"]["PREFECT__FLOW_RUN_ID"] == str(run.id)
    assert report["env"]["MAILSYNC_PROBE"] == "job-env"
    assert report["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    assert report["heartbeat"] == 30  # the setting, read after the fork
    assert report["refresh_concurrency"] == 3  # mailsync's settings too, cached or not
    assert report["api_url"].rstrip("/") == str(probe.client.api_url).rstrip("/")  # no ephemeral
    assert report["argv"][0].endswith("prefect/engine.py") and len(report["argv"]) == 1
    assert final.name and "warm-test" in final.tags

    def retried() -> list[TaskRun]:
        # Task runs reach Prefect as events: they show up shortly after the flow run ends.
        tasks = probe.client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
        return [t for t in tasks if t.state_name == "Completed" and t.run_count == 2]

    flaky = eventually(retried, "the retried task run in Prefect", 30)
    assert len(flaky) == 1 and flaky[0].name.startswith("flaky"), flaky

    def hello() -> bool:
        logs = probe.client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        return any("probe says hello" in log.message for log in logs)

    eventually(hello, "the run's log in Prefect", 30)


@pytest.mark.parametrize("deployment", ["command", "other"])
def test_runs_it_cannot_vouch_for_take_the_stock_path(probe: Probe, deployment: str) -> None:
    """An explicit `command` job variable, or an entrypoint the warm parent did not preload:
    the run is started by ProcessWorker's own path (not forked from the warm parent)."""
    run, report_path = probe.start(deployment)
    final = probe.final(run)
    assert final.state is not None and final.state.is_completed(), final.state
    report = probe.report(report_path)
    assert "mailsync.orchestration.zygote" not in cmdline(report["ppid"])
    assert report["env"]["MAILSYNC_PROBE"] == "job-env"


def test_cancelling_a_warm_run_stops_it(probe: Probe) -> None:
    """Cancelling (as the UI does: state Cancelling) reaches the forked run through the
    control channel: it ends Cancelled and its process is gone."""
    run, report_path = probe.start("warm", sleep=120)
    pid = probe.report(report_path)["pid"]
    probe.client.set_flow_run_state(run.id, Cancelling())
    final = probe.final(run, 60)
    assert final.state is not None and final.state.is_cancelled(), final.state
    eventually(lambda: not Path(f"/proc/{pid}").exists(), "the cancelled run to exit", 30)


def test_a_killed_warm_run_is_crashed(probe: Probe) -> None:
    """SIGKILL of a forked run: the zygote reports the signal as the exit status, and the
    worker proposes Crashed as it does for a subprocess."""
    run, report_path = probe.start("warm", sleep=120)
    pid = probe.report(report_path)["pid"]
    os.kill(pid, signal.SIGKILL)
    final = probe.final(run, 60)
    assert final.state is not None and final.state.is_crashed(), final.state


def test_runs_are_picked_up_on_events_not_the_poll(probe: Probe) -> None:
    """The worker polls once a minute, yet each new run is picked up (PENDING, by Prefect's
    own timestamps) within seconds: on its Scheduled event. Polling alone would leave a run
    waiting up to a minute, 30 s on average (two runs under 10 s: ~3 % by chance)."""
    for _ in range(2):
        run, _report = probe.start("warm")
        final = probe.final(run)
        assert final.state is not None and final.state.is_completed(), final.state
        states = probe.client.read_flow_run_states(run.id)
        pending = next(s.timestamp for s in states if s.type.value == "PENDING")
        assert final.created is not None
        waited = (pending - final.created).total_seconds()
        assert waited < 10, f"picked up after {waited:.1f} s: by the poll, not the event"
