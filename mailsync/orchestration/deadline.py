"""A time budget for each Prefect API call of the API process, across the Prefect client's
own retries.

Why: Prefect's client retries a 503, 429, 502 or 408 answer and read or connect errors up to
PREFECT_CLIENT_MAX_RETRIES (5) times, sleeping 2, 4, 8, 16, 32 s (or the Retry-After) in
between; a Prefect server busy on SQLite answers 503 `database is locked`, so one call could
hold an API request for a minute (seen in tests/drills/test_load_drill.py at full size). An API
request should rather fail fast with 503 + Retry-After and let its client come back. Flow runs
and workers keep Prefect's patience: only the API's Orchestrator uses this transport.

The Prefect client sends the same `httpx.Request` object on every retry, so the transport
knows when the call began: an attempt that would start after `budget` seconds raises
`PrefectCallTimeout` instead, which the client does not retry. Each attempt's own timeout is
set to the budget too (`Orchestrator.client`), so a call ends within about twice the budget.
What a timed-out write did on the server is unknown: a quota lease taken there is held until
it expires (the workspace is a slot short meanwhile); a full-sync lease likewise until its
lease time; a flow run created there finds its job failed and ends at once.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

import httpx


class PrefectCallTimeout(httpx.TransportError):
    """A Prefect call ran out of its budget between two of the client's retries."""


class DeadlineTransport(httpx.BaseTransport):
    def __init__(
        self,
        inner: httpx.BaseTransport,
        budget: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner, self._budget, self._clock = inner, budget, clock
        self._began: weakref.WeakKeyDictionary[httpx.Request, float] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        now = self._clock()
        with self._lock:
            began = self._began.setdefault(request, now)
        if now - began > self._budget:
            raise PrefectCallTimeout(
                f"Prefect did not answer {request.method} {request.url.path} "
                f"within {self._budget:g} s",
                request=request,
            )
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()
