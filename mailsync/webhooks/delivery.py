"""One attempt at one delivery: an HTTP POST pinned to the vetted address, bounded, recorded.

Nothing here retries: the outcome goes back to the outbox, which schedules the next attempt.
The error text kept in the log is short and never holds the URL, headers or secrets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    allow_loopback: bool = False,
    resolver: ssrf.Resolver = ssrf.system_resolver,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> AttemptResult:
    """POST the signed body once; a 2xx is delivered, anything else (3xx too) is a failure."""
    started = clock()
    clock = time.monotonic()

    def result(status: int | None, error: str | None) -> AttemptResult:
        return AttemptResult(started, status, int((time.monotonic() - clock) * 1000), error)

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
        # trust_env=False: a proxy would connect to the name, not the vetted address.
        with (
            httpx.Client(
                timeout=timeout, follow_redirects=False, trust_env=False, transport=transport
            ) as client,
            client.stream(
                "POST",
                vetted.pinned,
                content=outgoing.body,
                headers=headers,
                # TLS is checked against the name the receiver registered, not the address.
                extensions={"sni_hostname": vetted.url.host},
            ) as response,
        ):
            status = response.status_code  # the body is never read: it is not ours to keep
    except httpx.TimeoutException:
        return result(None, f"timed out after {timeout:g} s")
    except httpx.HTTPError as exc:
        return result(None, _short(exc))
    return result(status, None if 200 <= status < 300 else f"HTTP {status}")
