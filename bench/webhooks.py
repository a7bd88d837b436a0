"""Webhook latency: a job's end -> its email.sync.completed at a receiver, per delivery path.

On the default local stack (warm worker, loopback receivers allowed), one Gmail mailbox gets
10 new messages per round and a sync is triggered. Two scenarios, a number of rounds each:

- `one-endpoint`: the workspace has one endpoint; the job's own sync run makes the first
  attempt right after closing the job (mailsync/webhooks/dispatch.py `deliver_after_job`);
- `five-endpoints`: five endpoints; the run attempts four, and the fifth goes to a delivery
  run started at once, the path every delivery took before: its latency is reported apart.

Latency is the receiver's arrival time minus the job's `finished_at` (one machine's clock).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from sqlmodel import Session

from bench import harness
from bench.local_stack import LocalStack, local_stack
from mailsync.core import apikeys
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import SyncJob, as_utc
from mailsync.webhooks.dispatch import DELIVER_IN_RUN

SIZES = {"tiny": 2, "small": 8, "full": 20}
IN_RUN = DELIVER_IN_RUN  # endpoints a job's own run attempts


class Arrivals:
    """What the receivers got: (path, job_id) -> first arrival (epoch seconds)."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, str], float] = {}
        self.changed = threading.Condition()

    def record(self, path: str, body: dict[str, Any]) -> None:
        with self.changed:
            self.first.setdefault((path, str(body["data"]["job_id"])), time.time())
            self.changed.notify_all()

    def wait(self, paths: list[str], job_id: str, timeout: float = 120) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all((p, job_id) in self.first for p in paths):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"job {job_id}: not every receiver got its event")
                self.changed.wait(left)
            return {p: self.first[(p, job_id)] for p in paths}


@contextmanager
def receivers() -> Iterator[tuple[str, Arrivals]]:
    arrivals = Arrivals()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            arrivals.record(self.path, body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", arrivals
    finally:
        server.shutdown()


def _finished_at(stack: LocalStack, job_id: str) -> float:
    with Session(get_engine(stack.settings.resolved_database_url)) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None and job.finished_at is not None
        finished = as_utc(job.finished_at)
        assert isinstance(finished, datetime)
        return finished.astimezone(UTC).timestamp()


def _scenario(
    stack: LocalStack, base: str, arrivals: Arrivals, name: str, endpoints: int, rounds: int
) -> list[dict[str, Any]]:
    workspace, address = f"hooks-{name}", f"hooks-{name}@gmail.example"
    stack.connect("gmail", address, 100, workspace=workspace)
    with session_scope(stack.settings.resolved_database_url) as session:
        scopes = ["write:email", "read:email", "write:webhooks"]
        key = apikeys.create_api_key(session, workspace, scopes)[1]
    paths = [f"/{name}/{n}" for n in range(endpoints)]
    samples: dict[str, list[float]] = {"job's run": [], "delivery run": []}
    api = f"{stack.api_url}/v1"
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for path in paths:
            client.post(f"{api}/webhooks", json={"url": base + path}).raise_for_status()
        for n in range(rounds + 1):  # the first round is the initial full sync, not measured
            with stack.admin("gmail") as admin:
                admin.add_messages(address, 10)
            job_id = (
                client.post(f"{api}/email/sync", json={})
                .raise_for_status()
                .json()["data"]["job_id"]
            )
            arrived = arrivals.wait(paths, job_id)
            if n == 0:
                continue
            finished = _finished_at(stack, job_id)
            latencies = sorted(t - finished for t in arrived.values())
            samples["job's run"] += latencies[:IN_RUN]
            samples["delivery run"] += latencies[IN_RUN:]
            harness.console.log(f"{name}: " + ", ".join(f"{v:.2f}" for v in latencies) + " s")
    return [
        {
            "scenario": name,
            "path": path,
            "deliveries": len(values),
            "p50 s": harness.percentile(values, 50),
            "p95 s": harness.percentile(values, 95),
            "min s": min(values),
            "max s": max(values),
        }
        for path, values in samples.items()
        if values
    ]


def run(size: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with (
        receivers() as (base, arrivals),
        local_stack(env={"MAILSYNC_WEBHOOK_ALLOW_LOOPBACK": "true"}) as stack,
    ):
        for name, endpoints in (("one-endpoint", 1), ("five-endpoints", IN_RUN + 1)):
            rows += _scenario(stack, base, arrivals, name, endpoints, SIZES[size])
    return rows
