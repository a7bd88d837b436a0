"""Trigger latency: `POST /v1/email/sync` beside a bare endpoint doing one insert, same server.

The API runs under uvicorn in its own process on the default local stack (SQLite, a local
Prefect server; no worker, so the flow runs it creates stay queued and cost nothing else).
The sync quotas are raised for the run. Each concurrency level sends the same number of
requests from an asyncio client; latency is per request, rate is requests / wall time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from bench import harness
from bench.local_stack import local_stack

SIZES = {"tiny": (10, [1, 4]), "small": (100, [1, 16]), "full": (400, [1, 16, 64])}


async def _load(
    url: str, headers: dict[str, str], body: dict[str, Any], requests: int, concurrency: int
) -> tuple[list[float], float, dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                response = await client.post(url, json=body)
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started, statuses


def run(size: str) -> list[dict[str, Any]]:
    requests, levels = SIZES[size]
    rows: list[dict[str, Any]] = []
    with local_stack(workers=0, api_app="bench.bare_app:create_app") as stack:
        stack.connect("gmail", "trigger@gmail.example", 10)
        targets = {
            "POST /v1/email/sync": (f"{stack.api_url}/v1/email/sync", {"provider": "gmail"}),
            "POST /bare/insert": (f"{stack.api_url}/bare/insert", {}),
        }
        for concurrency in levels:
            measured: dict[str, dict[str, Any]] = {}
            for name, (url, body) in targets.items():
                asyncio.run(_load(url, stack.auth(), body, min(20, requests), concurrency))  # warm
                latencies, wall, statuses = asyncio.run(
                    _load(url, stack.auth(), body, requests, concurrency)
                )
                expected = 202 if "sync" in name else 201
                assert statuses == {expected: requests}, statuses
                measured[name] = {
                    "endpoint": name,
                    "concurrency": concurrency,
                    "requests": requests,
                    "p50 ms": 1000 * harness.percentile(latencies, 50),
                    "p99 ms": 1000 * harness.percentile(latencies, 99),
                    "req/s": requests / wall,
                }
            sync, bare = measured["POST /v1/email/sync"], measured["POST /bare/insert"]
            sync["p50 / bare p50"] = sync["p50 ms"] / bare["p50 ms"]
            bare["p50 / bare p50"] = 1.0
            rows += [sync, bare]
    return rows
