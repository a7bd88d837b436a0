"""Prefect's failures as mailsync errors, translated in one place for every Prefect call.

Everything a Prefect client call can raise when the server is away, slow or refusing
(connection and timeout errors, an HTTP error status, the client's own RuntimeError for a
closed event loop) becomes PrefectUnavailableError (503 `orchestrator_unavailable`), and a
missing object (ObjectNotFound) becomes one too, saying what was missing. Callers that give
ObjectNotFound a meaning of their own (a released lease, a limit never created) catch it
before it gets here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from mailsync.errors import PrefectUnavailableError

UNREACHABLE: tuple[type[BaseException], ...] = (
    httpx.HTTPError,
    PrefectHTTPStatusError,
    RuntimeError,
)
"""What a Prefect call raises when the API cannot serve it."""


@contextmanager
def prefect_calls(
    missing: str = "a Prefect object is missing",
    unreachable: str = "the Prefect API could not be reached",
) -> Iterator[None]:
    """Run Prefect calls; their failures leave as PrefectUnavailableError (`from` the cause)."""
    try:
        yield
    except ObjectNotFound as exc:
        raise PrefectUnavailableError(missing) from exc
    except UNREACHABLE as exc:
        raise PrefectUnavailableError(unreachable) from exc
