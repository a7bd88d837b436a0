"""Trigger latency: `POST /v1/email/sync` beside a bare endpoint doing one insert, same server.

The API runs under uvicorn in its own process on the default local stack (SQLite, a local
Prefect server; no worker, so the flow runs it creates stay queued and cost nothing else).
Prefect's late-runs service is off for the run: otherwise it rewrites every one of the
thousand queued runs as Late, and its writes lock Prefect's SQLite database under the burst
(seen: `database is locked` from the server and requests waiting past 60 s).
The sync quotas are raised for the run. Each concurrency level sends the same number of
requests from an asyncio client; latency is per request, rate is requests / wall time.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx
from fastapi.testclient import TestClient

from bench import harness
from bench.local_stack import LocalStack, local_stack
from mailsync.api.app import create_app
from mailsync.orchestration.orchestrator import Orchestrator

SIZES = {"tiny": (10, [1, 4]), "small": (100, [1, 16]), "full": (300, [1, 16, 64])}


async def _load(
    url: str, headers: dict[str, str], body: dict[str, Any], requests: int, concurrency: int
) -> tuple[list[tuple[int, float]], float]:
    """(status, seconds) per request, and the wall time; status 0 = no answer within 60 s."""
    outcomes: list[tuple[int, float]] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                try:
                    status = (await client.post(url, json=body)).status_code
                except httpx.TimeoutException:
                    status = 0  # no answer within the client's 60 s: counted, not hidden
                outcomes.append((status, time.perf_counter() - started))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return outcomes, time.perf_counter() - started


def _ms(values: list[float], pct: float) -> float | None:
    return 1000 * harness.percentile(values, pct) if values else None


def _timed(timings: dict[str, list[float]], name: str, fn: Callable[..., Any]) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[name].append(time.perf_counter() - started)

    return timed


def breakdown(stack: LocalStack, requests: int) -> list[dict[str, Any]]:
    """Where one trigger's time goes: the same app in this process (one request at a time),
    its orchestrator's Prefect calls timed one by one."""
    timings: dict[str, list[float]] = defaultdict(list)
    orchestrator = Orchestrator(stack.prefect_api_url, stack.settings)
    admission = orchestrator.admission
    admission.check_no_full_sync = _timed(  # type: ignore[method-assign]
        timings, "409 check: full-sync limits read (Prefect)", admission.check_no_full_sync
    )
    admission.take_quota = _timed(  # type: ignore[method-assign]
        timings, "quota slot: lease taken (Prefect)", admission.take_quota
    )
    orchestrator.submit = _timed(  # type: ignore[method-assign]
        timings, "flow run created (Prefect)", orchestrator.submit
    )
    with TestClient(create_app(stack.settings, orchestrator)) as client:
        for _ in range(requests):
            started = time.perf_counter()
            response = client.post("/v1/email/sync", headers=stack.auth(), json={})
            timings["whole POST (in process)"].append(time.perf_counter() - started)
            assert response.status_code == 202, response.text
    whole = harness.percentile(timings["whole POST (in process)"], 50)
    return [
        {
            "part": name,
            "p50 ms": 1000 * harness.percentile(values, 50),
            "share of POST p50": harness.percentile(values, 50) / whole,
        }
        for name, values in timings.items()
    ]


def run(size: str) -> list[dict[str, Any]]:
    requests, levels = SIZES[size]
    rows: list[dict[str, Any]] = []
    quiet = {"PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}
    with local_stack(workers=0, api_app="bench.bare_app:create_app", prefect=quiet) as stack:
        stack.connect("gmail", "trigger@gmail.example", 10)
        targets = {
            "POST /v1/email/sync": (f"{stack.api_url}/v1/email/sync", {"provider": "gmail"}),
            "POST /bare/insert": (f"{stack.api_url}/bare/insert", {}),
        }
        for concurrency in levels:
            measured: dict[str, dict[str, Any]] = {}
            for name, (url, body) in targets.items():
                asyncio.run(_load(url, stack.auth(), body, min(20, requests), concurrency))  # warm
                outcomes, wall = asyncio.run(_load(url, stack.auth(), body, requests, concurrency))
                expected = 202 if "sync" in name else 201
                accepted = [t for status, t in outcomes if status == expected]
                shed = [t for status, t in outcomes if status == 503]
                measured[name] = {
                    "endpoint": name,
                    "concurrency": concurrency,
                    "requests": requests,
                    "accepted": len(accepted),
                    "p50 ms": _ms(accepted, 50),
                    "p99 ms": _ms(accepted, 99),
                    "accepted/s": len(accepted) / wall,
                    # Load shedding (mailsync/api/overload.py): refused at once, retry later.
                    "503 shed": len(shed),
                    "503 p99 ms": _ms(shed, 99),
                    "other": sum(1 for status, _ in outcomes if status not in (expected, 503, 0)),
                    "timeouts (60 s)": sum(1 for status, _ in outcomes if status == 0),
                }
            sync, bare = measured["POST /v1/email/sync"], measured["POST /bare/insert"]
            sync["p50 / bare p50"] = (
                sync["p50 ms"] / bare["p50 ms"] if sync["p50 ms"] and bare["p50 ms"] else None
            )
            bare["p50 / bare p50"] = 1.0
            rows += [sync, bare]
        parts = breakdown(stack, min(requests, 100))
    harness.show("one trigger, part by part (p50)", parts)
    return rows
