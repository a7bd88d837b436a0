"""End to end: API trigger -> completed job, for an incremental sync of 100 new messages.

On the default local stack (one process worker polling every second, SQLite), each round adds
100 messages to the fake Gmail mailbox, posts `{"provider": "gmail"}` and polls the job every
20 ms until it is completed. Besides the total, the phases come from the job record and the
flow run's Prefect states: job queued -> PENDING (the worker picked the run up) -> RUNNING (a
new interpreter imported Prefect and the flow) -> job started (open-job task) -> job finished
(the sync) -> seen by the poller. Queued is stamped before the trigger's admission checks,
so the first phase includes part of the POST.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient
from sqlmodel import Session

from bench import harness
from bench.local_stack import LocalStack, job, local_stack
from mailsync.db import get_engine
from mailsync.models import SyncJob, as_utc

SIZES = {"tiny": 2, "small": 8, "full": 20}
NEW_MESSAGES = 100


def _phases(stack: LocalStack, job_id: str, posted: float, seen: float) -> dict[str, float]:
    """Where the time went, from the job record and the flow run's Prefect states."""
    with Session(get_engine(stack.settings.resolved_database_url)) as session:
        row = session.get(SyncJob, job_id)
        assert row is not None and row.flow_run_id
        queued, started, finished = (
            as_utc(row.queued_at), as_utc(row.started_at), as_utc(row.finished_at)
        )  # fmt: skip
        assert queued and started and finished
    with SyncPrefectClient(stack.prefect_api_url) as client:
        states = client.read_flow_run_states(UUID(row.flow_run_id))
    at = {state.type.value: state.timestamp for state in states}
    pending, running = at["PENDING"], at["RUNNING"]
    return {
        "worker pick-up": (pending - queued).total_seconds(),
        "process start": (running - pending).total_seconds(),
        "open job": (started - running).total_seconds(),
        "sync": (finished - started).total_seconds(),
        "seen by poller": seen - posted - (finished - queued).total_seconds(),
    }


def run(size: str) -> list[dict[str, Any]]:
    samples: list[dict[str, float]] = []
    with local_stack() as stack:
        stack.connect("gmail", "e2e@gmail.example", 1_000)
        url = f"{stack.api_url}/v1/email/sync"
        with httpx.Client(headers=stack.auth(), timeout=30) as client:
            first = client.post(url, json={}).raise_for_status().json()["data"]["job_id"]
            while job(stack, first)["status"] not in ("completed", "failed"):
                time.sleep(0.2)  # the initial full sync, not measured
            with stack.admin("gmail") as admin:
                for _ in range(SIZES[size]):
                    admin.post(
                        "/_admin/mailboxes/e2e@gmail.example/messages",
                        json={"count": NEW_MESSAGES},
                    ).raise_for_status()
                    started = time.perf_counter()
                    posted = client.post(url, json={"provider": "gmail"}).raise_for_status()
                    accepted = time.perf_counter()
                    job_id = posted.json()["data"]["job_id"]
                    while True:
                        data = client.get(f"{url}/{job_id}").raise_for_status().json()["data"]
                        if data["status"] in ("completed", "failed"):
                            break
                        time.sleep(0.02)
                    total = time.perf_counter() - started
                    assert data["status"] == "completed", data
                    assert data["counts"]["messages_added"] == NEW_MESSAGES, data
                    samples.append(
                        {
                            "total": total,
                            "trigger (POST)": accepted - started,
                            **_phases(stack, job_id, started, started + total),
                        }
                    )
                    harness.console.log(f"trigger -> completed: {total:.2f} s")
    rows = []
    for name in samples[0]:
        values = [s[name] for s in samples]
        rows.append(
            {
                "phase": name,
                "runs": len(values),
                "p50 s": harness.percentile(values, 50),
                "p95 s": harness.percentile(values, 95),
                "max s": max(values),
            }
        )
    return rows
