"""One attempt at one delivery: an HTTP POST pinned to the vetted address, bounded, recorded.

Nothing here retries: the outcome goes back to the outbox, which schedules the next attempt.
The error text kept in the log is short and never holds the URL, headers or secrets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import httpx

from mailsync import __version__
from mailsync.db.tables import utcnow
from mailsync.errors import UnsafeUrlError
from mailsync.webhooks import signing, ssrf

USER_AGENT = f"mailsync-webhooks/{__version__}"


@dataclass(frozen=True)
class Outgoing:
    delivery_id: str
    event_id: str  # the webhook-id, the same on every attempt and replay
    url: str
    body: bytes
    secrets: list[str]


@dataclass(frozen=True)
class AttemptResult:
    started_at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]


def broken(started: datetime, tick: float, exc: BaseException) -> AttemptResult:
    """The attempt that raised before an answer (a bug, an unreadable secret): its type only."""
    return AttemptResult(
        started, None, int((time.monotonic() - tick) * 1000), f"no response: {type(exc).__name__}"
    )


def send(
    outgoing: Outgoing,
    *,
    timeout: float,
    total_timeout: float | None = None,
    allow_loopback: bool = False,
    resolver: ssrf.Resolver = ssrf.system_resolver,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> AttemptResult:
    """POST the signed body once; a 2xx is delivered, anything else (3xx too) is a failure.

    `timeout` bounds each phase (connect, TLS, every read and write), `total_timeout` (default:
    `timeout`) the whole exchange: a receiver trickling a byte a second never trips the first.
    """
    started = clock()
    clock_ms = time.monotonic()
    total = timeout if total_timeout is None else total_timeout

    def result(status: int | None, error: str | None) -> AttemptResult:
        return AttemptResult(started, status, int((time.monotonic() - clock_ms) * 1000), error)

    try:
        vetted = ssrf.vet(outgoing.url, allow_loopback=allow_loopback, resolver=resolver)
    except UnsafeUrlError as exc:
        return result(None, f"refused: {exc}"[:200])
    headers = {
        **signing.signature_headers(outgoing.secrets, outgoing.event_id, outgoing.body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": vetted.host_header,
    }
    try:
        status = _run(partial(_post, vetted, outgoing.body, headers, timeout, total, transport))
    except httpx.TimeoutException:
        return result(None, f"timed out after {timeout:g} s")
    except TimeoutError:
        return result(None, f"timed out after {total:g} s in all")
    except httpx.HTTPError as exc:
        return result(None, _short(exc))
    return result(status, None if 200 <= status < 300 else f"HTTP {status}")


async def _post(
    vetted: ssrf.VettedUrl,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    total: float,
    transport: httpx.AsyncBaseTransport | None,
) -> int:
    # httpx's timeouts are per phase; cancelling the whole exchange is what bounds it in all.
    with anyio.fail_after(total):
        # trust_env=False: a proxy would connect to the name, not the vetted address.
        async with (
            httpx.AsyncClient(
                timeout=timeout, follow_redirects=False, trust_env=False, transport=transport
            ) as client,
            client.stream(
                "POST",
                vetted.pinned,
                content=body,
                headers=headers,
                # TLS is checked against the name the receiver registered, not the address.
                extensions={"sni_hostname": vetted.url.host},
            ) as response,
        ):
            return response.status_code  # the body is never read: it is not ours to keep


def _run(attempt: Callable[[], Awaitable[int]]) -> int:
    """Run the attempt on an event loop of its own: callers are sync (Prefect task threads)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(attempt)
    # A thread that runs a loop already cannot start a second one: lend it one more thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(anyio.run, attempt).result()
