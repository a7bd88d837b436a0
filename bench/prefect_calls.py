"""Counts the Prefect API calls of one incremental job, from the POST to the GET that says done.

The Prefect server of a default local stack logs every HTTP request it answers (uvicorn's
access log, at PREFECT_SERVER_LOGGING_LEVEL=INFO). One Gmail mailbox is connected and synced
once; then each round adds `new` messages, triggers `POST /v1/email/sync {"provider":
"gmail"}`, polls `GET /v1/email/sync/{id}` every 0.25 s until it says completed, waits for the
server to go quiet (the run's last steps and log flush come after the job's end), takes the
access-log lines written meanwhile, and checks that the run was COMPLETED by then. Requests
are grouped by method and path (ids replaced by `{id}`). Websocket connections (events, logs)
are counted as connections: the events a run streams over them are not HTTP calls.

    python -m bench.prefect_calls [--rounds 3] [--new 10] [--worker-type warm]
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import typer
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from rich.console import Console
from rich.table import Table

from bench.local_stack import LocalStack, local_stack

_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>/[^ ?"]*)[^"]*" (?P<status>\d{3})')
_WEBSOCKET = re.compile(r'"WebSocket (?P<path>/[^ "]*)" \[accepted\]')
_ID = re.compile(
    r"/(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mailsync-mailbox:[^/]+)"
)
RESULTS = Path(__file__).parent / "results" / "prefect_calls.json"

app = typer.Typer(add_completion=False)


def _server_log(stack: LocalStack) -> Path:
    return stack.workdir / "logs" / "prefect-server.log"


def _calls(text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if match := _LINE.search(line):
            counts[f"{match['method']} {_ID.sub('/{id}', match['path'])}"] += 1
        elif match := _WEBSOCKET.search(line):
            counts[f"WS {match['path']}"] += 1
    return counts


# The worker's own loop (polls every PREFECT_WORKER_QUERY_SECONDS, heartbeats) runs whatever
# the jobs do: reported apart, and ignored when waiting for the server to go quiet.
BACKGROUND = ("get_scheduled_flow_runs", "/workers/heartbeat")


def _job_lines(log: Path) -> int:
    text = log.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if not any(b in line for b in BACKGROUND))


def _quiet(log: Path, seconds: float = 1.5, timeout: float = 30) -> None:
    """Until the server answered nothing but the worker's loop for `seconds` (stragglers:
    the run's last steps, log flushes)."""
    deadline = time.monotonic() + timeout
    lines, since = _job_lines(log), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _job_lines(log)
        if now != lines:
            lines, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
    raise RuntimeError(f"the Prefect server did not go quiet within {timeout} s")


def one_round(stack: LocalStack, address: str, new: int) -> dict[str, Counter[str]]:
    """The calls of one job by phase: during the POST, until a GET says completed, after."""
    log = _server_log(stack)
    _quiet(log)
    with stack.admin("gmail") as admin:
        admin.add_messages(address, new)
    start = log.stat().st_size
    posted = httpx.post(
        f"{stack.api_url}/v1/email/sync", headers=stack.auth(), json={"provider": "gmail"}
    )
    job_id = posted.raise_for_status().json()["data"]["job_id"]
    accepted = log.stat().st_size
    deadline = time.monotonic() + 120
    while True:
        view = httpx.get(f"{stack.api_url}/v1/email/sync/{job_id}", headers=stack.auth())
        status = view.raise_for_status().json()["data"]["status"]
        if status in ("completed", "failed"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not end")
        time.sleep(0.25)
    if status != "completed":
        raise RuntimeError(f"job {job_id} {status}")
    ended = log.stat().st_size
    # The run's last steps (summary artifact, COMPLETED) and its log flush follow the job's
    # end: counted once the server has gone quiet, before this script asks Prefect anything.
    _quiet(log, seconds=2.0)
    text = log.read_bytes()
    phases = {
        "trigger": _calls(text[start:accepted].decode(errors="replace")),
        "run": _calls(text[accepted:ended].decode(errors="replace")),
        "after": _calls(text[ended:].decode(errors="replace")),
    }
    loop: Counter[str] = Counter()
    for counts in phases.values():
        for call in [c for c in counts if any(b in c for b in BACKGROUND)]:
            loop[call] += counts.pop(call)
    phases["worker loop"] = loop
    with stack.prefect() as prefect:
        runs = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[job_id]))
        )
    if [r.state_type.value if r.state_type else None for r in runs] != ["COMPLETED"]:
        raise RuntimeError(f"the run of {job_id} had not completed when counted: {runs}")
    return phases


@app.command()
def main(rounds: int = 3, new: int = 10, worker_type: str = "warm") -> None:
    console = Console()
    address = "calls@gmail.example"
    prefect = {"PREFECT_SERVER_LOGGING_LEVEL": "INFO"}
    with local_stack(workers=1, prefect=prefect, worker_type=worker_type) as stack:
        stack.connect("gmail", address, 50)
        one_round(stack, address, 0)  # the initial full sync: not what is counted
        per_round = [one_round(stack, address, new) for _ in range(rounds)]
    calls = sorted(
        {(phase, call) for r in per_round for phase, counts in r.items() for call in counts}
    )
    table = Table(title=f"Prefect API calls of one incremental job ({worker_type} worker)")
    table.add_column("phase")
    table.add_column("call")
    for n in range(rounds):
        table.add_column(f"round {n + 1}", justify="right")
    for phase, call in calls:
        table.add_row(phase, call, *(str(r[phase][call]) for r in per_round))
    for phase in ("trigger", "run", "after", "worker loop"):
        totals = [str(sum(r[phase].values())) for r in per_round]
        table.add_row(phase, "total", *totals, style="bold")
    table.add_row(
        "job",
        "total (trigger + run + after)",
        *(str(sum(sum(r[p].values()) for p in ("trigger", "run", "after"))) for r in per_round),
        style="bold",
    )
    console.print(table)
    result: dict[str, Any] = {
        "command": f"python -m bench.prefect_calls --rounds {rounds} --new {new} "
        f"--worker-type {worker_type}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rounds": [{p: dict(sorted(c.items())) for p, c in r.items()} for r in per_round],
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    app()
