"""End to end: API trigger -> completed job, on the warm worker beside Prefect's stock one.

Each requested Prefect database x worker type gets its own default local stack (one worker
polling every second, the API under uvicorn), one after the other in the same run, so the
warm / stock ratios come from one run. On each stack two scenarios, a number of rounds each:

- `gmail-100`: add 100 messages to one fake Gmail mailbox, `POST {"provider": "gmail"}`;
- `both-10`: add 10 messages to each of a workspace's two mailboxes (one Gmail, one Microsoft,
  as the demo's), `POST {}`: one job over both.

A round polls the job every 20 ms until it is completed. Besides the total, the phases come
from the job record and the flow run's Prefect states: job queued -> PENDING (the worker picked
the run up) -> RUNNING (the run's process is up: a fresh interpreter, or a fork of the warm
parent) -> job started (open-job task) -> job finished (the sync) -> seen by the poller.
Queued is stamped before the trigger's admission checks, so the first phase includes part of
the POST. The sync phase is split again by the run's task runs (Prefect's start and end times
of the `sync-mailbox-provider` tasks), and the last round of each scenario keeps the flow run's
Prefect log lines with their times, to see where a slow round went.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import LogSort
from sqlmodel import Session

from bench import harness
from bench.local_stack import LocalStack, local_stack
from mailsync.db import get_engine
from mailsync.db.tables import SyncJob, as_utc

SIZES = {"tiny": 2, "small": 8, "full": 20}
# Issue 13's targets, on the default stack (Prefect on SQLite): scenario -> (p50 s, p95 s).
TARGETS: dict[str, tuple[float, float | None]] = {"gmail-100": (1.5, 3.0), "both-10": (2.0, None)}


@dataclass(frozen=True)
class Scenario:
    name: str
    workspace: str
    mailboxes: tuple[tuple[str, str], ...]  # (provider, address)
    new_messages: int  # per mailbox per round
    body: dict[str, str]


SCENARIOS = (
    Scenario("gmail-100", "e2e", (("gmail", "e2e@gmail.example"),), 100, {"provider": "gmail"}),
    Scenario(
        "both-10",
        "demo",
        (("gmail", "demo.user@gmail.example"), ("microsoft", "demo.user@contoso.example")),
        10,
        {},
    ),
)


# sync-mailbox-provider task runs are named "{provider}:{address}".
PROVIDER_TASK_RUN = ("gmail:", "microsoft:")


def _phases(stack: LocalStack, job_id: str, posted: float, seen: float) -> dict[str, float]:
    """Where the time went, from the job record, the flow run's Prefect states and its task
    runs."""
    with Session(get_engine(stack.settings.resolved_database_url)) as session:
        row = session.get(SyncJob, job_id)
        assert row is not None and row.flow_run_id
        queued, started, finished = (
            as_utc(row.queued_at), as_utc(row.started_at), as_utc(row.finished_at)
        )  # fmt: skip
        assert queued and started and finished
    with stack.prefect() as client:
        states = client.read_flow_run_states(UUID(row.flow_run_id))
        run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(row.flow_run_id)]))
        for _ in range(50):  # task runs reach the server as events, a moment after the run
            tasks = client.read_task_runs(flow_run_filter=run_filter)
            provider = [t for t in tasks if t.name.startswith(PROVIDER_TASK_RUN) and t.end_time]
            if len(provider) == max(1, len(row.mailboxes)):
                break
            time.sleep(0.1)
    at = {state.type.value: state.timestamp for state in states}
    pending, running = at["PENDING"], at["RUNNING"]
    first = min(t.start_time for t in provider if t.start_time)
    last = max(t.end_time for t in provider if t.end_time)
    return {
        "worker pick-up": (pending - queued).total_seconds(),
        "process start": (running - pending).total_seconds(),
        "open job": (started - running).total_seconds(),
        "sync": (finished - started).total_seconds(),
        "  sync: job started -> provider task running": (first - started).total_seconds(),
        "  sync: provider task(s) running": (last - first).total_seconds(),
        "  sync: provider task end -> job finished": (finished - last).total_seconds(),
        "seen by poller": seen - posted - (finished - queued).total_seconds(),
    }


def timeline(stack: LocalStack, job_id: str) -> list[str]:
    """The flow run's state changes and Prefect log lines, in seconds after it was queued."""
    with Session(get_engine(stack.settings.resolved_database_url)) as session:
        row = session.get(SyncJob, job_id)
        assert row is not None and row.flow_run_id and row.queued_at
        queued = as_utc(row.queued_at)
    assert queued is not None
    flow_run_id = UUID(row.flow_run_id)
    with stack.prefect() as client:
        states = client.read_flow_run_states(flow_run_id)
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            sort=LogSort.TIMESTAMP_ASC,
        )
    events = [(s.timestamp, f"flow run {s.type.value}") for s in states]
    events += [(log.timestamp, f"log {log.name}: {log.message[:120]}") for log in logs]
    return [f"{(t - queued).total_seconds():7.3f}  {text}" for t, text in sorted(events)]


def _added(data: dict[str, Any]) -> int:
    """Messages added by a job, whether the response sums its mailboxes or lists them."""
    if "counts" in data:
        return int(data["counts"].get("messages_added", 0))
    return sum(int(m["counts"].get("messages_added", 0)) for m in data.get("mailboxes") or [])


def _wait(client: httpx.Client, url: str, interval: float) -> dict[str, Any]:
    while True:
        data: dict[str, Any] = client.get(url).raise_for_status().json()["data"]
        if data["status"] in ("completed", "failed"):
            return data
        time.sleep(interval)


def _scenario(
    stack: LocalStack, scenario: Scenario, rounds: int
) -> tuple[list[dict[str, float]], list[str]]:
    for provider, address in scenario.mailboxes:
        stack.connect(provider, address, 1_000, workspace=scenario.workspace)
    url = f"{stack.api_url}/v1/email/sync"
    samples: list[dict[str, float]] = []
    with httpx.Client(headers=stack.key_for(scenario.workspace), timeout=30) as client:
        first = client.post(url, json={}).raise_for_status().json()["data"]["job_id"]
        # The initial full sync, not measured.
        assert _wait(client, f"{url}/{first}", 0.2)["status"] == "completed"
        for _ in range(rounds):
            for provider, address in scenario.mailboxes:
                with stack.admin(provider) as admin:
                    admin.add_messages(address, scenario.new_messages)
            started = time.perf_counter()
            posted = client.post(url, json=scenario.body).raise_for_status()
            accepted = time.perf_counter()
            job_id = posted.json()["data"]["job_id"]
            data = _wait(client, f"{url}/{job_id}", 0.02)
            total = time.perf_counter() - started
            assert data["status"] == "completed", data
            expected = scenario.new_messages * len(scenario.mailboxes)
            assert _added(data) == expected, data
            samples.append(
                {
                    "total": total,
                    "trigger (POST)": accepted - started,
                    **_phases(stack, job_id, started, started + total),
                }
            )
            harness.console.log(f"{scenario.name}: trigger -> completed {total:.2f} s")
    return samples, timeline(stack, job_id)


def _summary(samples: list[dict[str, float]], **labels: str) -> list[dict[str, Any]]:
    rows = []
    for name in samples[0]:
        values = [s[name] for s in samples]
        rows.append(
            {
                **labels,
                "phase": name,
                "runs": len(values),
                "p50 s": harness.percentile(values, 50),
                "p95 s": harness.percentile(values, 95),
                "min s": min(values),
                "max s": max(values),
            }
        )
    return rows


def run(
    size: str, worker_types: list[str], prefect_dbs: list[str]
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The rows, and each stack and scenario's last-round timeline."""
    rows: list[dict[str, Any]] = []
    timelines: dict[str, list[str]] = {}
    for prefect_db in prefect_dbs:
        for worker in worker_types:
            harness.console.log(f"stack: Prefect on {prefect_db}, {worker} worker")
            with local_stack(worker_type=worker, prefect_db=prefect_db) as stack:
                for scenario in SCENARIOS:
                    samples, lines = _scenario(stack, scenario, SIZES[size])
                    labels = {"prefect db": prefect_db, "worker": worker}
                    rows += _summary(samples, scenario=scenario.name, **labels)
                    timelines[f"{scenario.name} {prefect_db} {worker}"] = lines
    return rows, timelines


def ratios(
    rows: list[dict[str, Any]], warm: str = "warm", stock: str = "process"
) -> list[dict[str, Any]]:
    """warm / stock per scenario, Prefect database and phase (p50 and p95), from one run."""
    by_key = {(r["scenario"], r["prefect db"], r["worker"], r["phase"]): r for r in rows}
    out = []
    for (scenario, prefect_db, worker, phase), row in by_key.items():
        other = by_key.get((scenario, prefect_db, stock, phase))
        if worker != warm or other is None:
            continue
        out.append(
            {
                "scenario": scenario,
                "prefect db": prefect_db,
                "phase": phase,
                "warm p50 s": row["p50 s"],
                "stock p50 s": other["p50 s"],
                "p50 warm/stock": row["p50 s"] / other["p50 s"] if other["p50 s"] else None,
                "p95 warm/stock": row["p95 s"] / other["p95 s"] if other["p95 s"] else None,
            }
        )
    return out


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each measured stack's totals against issue 13's targets (set for Prefect on SQLite)."""
    out = []
    for row in rows:
        if row["phase"] != "total" or row["scenario"] not in TARGETS:
            continue
        p50, p95 = TARGETS[row["scenario"]]
        met = row["p50 s"] <= p50 and (p95 is None or row["p95 s"] <= p95)
        out.append(
            {
                "scenario": row["scenario"],
                "prefect db": row["prefect db"],
                "worker": row["worker"],
                "target": f"p50 <= {p50} s" + (f", p95 <= {p95} s" if p95 else ""),
                "p50 s": row["p50 s"],
                "p95 s": row["p95 s"],
                "met": "yes" if met else "NOT met",
            }
        )
    return out
