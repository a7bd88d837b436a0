"""Memory per flow run: N syncs at once on the warm worker beside Prefect's stock worker.

A warm run is a fork of the zygote, so most of its pages are the parent's until written; what
each run really costs is its private memory (USS: Private_Clean + Private_Dirty of
/proc/<pid>/smaps_rollup). For each worker type, on its own default local stack with the
worker's limit at N: N Gmail mailboxes (one workspace each) are synced once, then each gets new
messages and the fake's hold fault, and N incremental syncs are triggered; once all N runs are
inside their sync (held on a provider call), every process whose /proc/<pid>/environ carries
PREFECT__FLOW_RUN_ID=<run id> is sampled, and the holds are released.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from bench import harness
from bench.local_stack import LocalStack, local_stack
from mailsync.db.tables import SyncJob
from mailsync.devstack.processes import worker_name

SIZES = {"tiny": 2, "small": 4, "full": 4}
SETTLE_S = 2.0  # inside the sync, so its lazy imports and first pages count


def smaps(pid: int) -> dict[str, float]:
    """RSS, PSS and USS of a process, in MB, from /proc/<pid>/smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return {
        "rss MB": fields["Rss"] / 1024,
        "pss MB": fields["Pss"] / 1024,
        "uss MB": (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024,
    }


def _processes() -> dict[int, tuple[str, bytes]]:
    """Every readable process: pid -> (command line, environment)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            found[int(entry.name)] = (cmdline, (entry / "environ").read_bytes())
        except OSError:
            continue  # gone, or not ours
    return found


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _role(cmdline: str) -> str:
    if "mailsync.orchestration.zygote" in cmdline:
        return "warm run (fork of the zygote)"
    if "_workspace_supervisor" in cmdline:
        return "stock: workspace supervisor"
    if "prefect.engine" in cmdline:
        return "stock: python -m prefect.engine"
    return cmdline[:60]


def _status(stack: LocalStack, job_id: str, auth: dict[str, str]) -> str:
    response = httpx.get(f"{stack.api_url}/v1/email/sync/{job_id}", headers=auth, timeout=30)
    return str(response.raise_for_status().json()["data"]["status"])


def _wait_ended(stack: LocalStack, jobs: dict[str, dict[str, str]]) -> None:
    for job_id, auth in jobs.items():
        while (status := _status(stack, job_id, auth)) not in ("completed", "failed"):
            time.sleep(0.2)
        assert status == "completed", job_id


def _flow_run_id(stack: LocalStack, job_id: str) -> str | None:
    from sqlmodel import Session

    from mailsync.db import get_engine

    with Session(get_engine(stack.settings.resolved_database_url)) as session:
        row = session.get(SyncJob, job_id)
        return row.flow_run_id if row is not None and row.started_at is not None else None


def _measure(worker: str, runs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with local_stack(worker_type=worker, worker_limit=runs) as stack:
        url = f"{stack.api_url}/v1/email/sync"
        boxes = [(f"mem-{n}", f"mem-{n}@gmail.example") for n in range(runs)]
        keys = {}
        for workspace, address in boxes:
            stack.connect("gmail", address, 100, workspace=workspace)
            keys[workspace] = stack.key_for(workspace)
        first = {
            httpx.post(url, json={}, headers=keys[w], timeout=30)
            .raise_for_status()
            .json()["data"]["job_id"]: keys[w]
            for w, _ in boxes
        }
        _wait_ended(stack, first)  # the initial full syncs
        with stack.admin("gmail") as admin:
            for _, address in boxes:
                admin.add_messages(address, 10)
                admin.hold(address)
            try:
                job_ids = [
                    httpx.post(url, json={"provider": "gmail"}, headers=keys[w], timeout=30)
                    .raise_for_status()
                    .json()["data"]["job_id"]
                    for w, _ in boxes
                ]
                deadline = time.monotonic() + 120
                runs_by_job: dict[str, str] = {}
                while len(runs_by_job) < runs and time.monotonic() < deadline:
                    for job_id in job_ids:
                        flow_run_id = _flow_run_id(stack, job_id)
                        if flow_run_id:
                            runs_by_job[job_id] = flow_run_id
                    time.sleep(0.2)
                assert len(runs_by_job) == runs, f"only {len(runs_by_job)} of {runs} runs started"
                time.sleep(SETTLE_S)
                processes = _processes()
                worker_pid = next(
                    pid for pid, (cmd, _) in processes.items() if worker_name(0) in cmd
                )
                for flow_run_id in runs_by_job.values():
                    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
                    for pid, (cmdline, environ) in processes.items():
                        if marker in environ.split(b"\0"):
                            rows.append(
                                {"worker": worker, "process": _role(cmdline), "pid": pid}
                                | smaps(pid)
                            )
                for pid, (cmdline, _) in processes.items():
                    if pid == worker_pid or (
                        "mailsync.orchestration.zygote" in cmdline and _parent(pid) == worker_pid
                    ):
                        role = "worker" if pid == worker_pid else "zygote (shared parent)"
                        rows.append({"worker": worker, "process": role, "pid": pid} | smaps(pid))
            finally:
                for _, address in boxes:
                    admin.release(address)
        _wait_ended(stack, {job_id: keys[w] for job_id, (w, _) in zip(job_ids, boxes, strict=True)})
    return rows


def run(size: str, worker_types: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for worker in worker_types:
        harness.console.log(f"stack: {worker} worker, {SIZES[size]} runs at once")
        rows += _measure(worker, SIZES[size])
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per worker type and process role: how many, mean and max USS, mean RSS and PSS."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["worker"], row["process"]), []).append(row)
    return [
        {
            "worker": worker,
            "process": role,
            "count": len(members),
            "mean uss MB": sum(m["uss MB"] for m in members) / len(members),
            "max uss MB": max(m["uss MB"] for m in members),
            "mean pss MB": sum(m["pss MB"] for m in members) / len(members),
            "mean rss MB": sum(m["rss MB"] for m in members) / len(members),
        }
        for (worker, role), members in groups.items()
    ]
