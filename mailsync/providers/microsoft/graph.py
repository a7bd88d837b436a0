"""Graph GETs for one mailbox: pooled connections, at most N in flight, 429s and outages retried."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from mailsync.providers.base import ProviderError, TransientProviderError
from mailsync.providers.microsoft.connections import BorrowedTransport, graph_pool
from mailsync.providers.microsoft.errors import (
    _Retryable,
    _Throttled,
    caused_by_tls_verification,
    raise_for_graph,
)
from mailsync.providers.microsoft.tokens import Tokens
from mailsync.providers.retry import RetryPolicy, retrying

logger = logging.getLogger(__package__)

# A 429 is waited out when its Retry-After (1 s when it names none) is at most 5 s, 4 times
# over; a hair over Retry-After, since msal refuses an identical token request until it passed.
THROTTLED = RetryPolicy(
    attempts=5,
    max_retry_after=5.0,
    default_retry_after=1.0,
    retry_after_margin=0.05,
    on=(_Throttled,),
)
# 5xx, 408, timeouts, dropped connections and identity platform outages: 5 retries after a
# jittered backoff from 0.5 s, or after a Retry-After of at most 5 s when one is given.
TRANSIENT = RetryPolicy(
    attempts=6,
    backoff=0.5,
    jitter=0.5,
    max_retry_after=5.0,
    retry_after_margin=0.05,
    on=(_Retryable,),
)


class Graph:
    """One mailbox's way to Graph: the process's connections (see connections.py) with this
    mailbox's headers and tokens, and at most `max_in_flight` requests at once."""

    def __init__(
        self,
        base: str,
        ca_bundle: str | None,
        timeout: float,
        page_size: int,
        tokens: Tokens,
        max_in_flight: int,
    ) -> None:
        self._tokens = tokens
        # The pool stays open while this instance holds it (until close()).
        self._pool = graph_pool(base, ca_bundle, timeout)
        self._http = httpx.Client(
            base_url=base,
            transport=BorrowedTransport(self._pool.value),
            trust_env=False,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            headers={
                "Accept": "application/json",
                # Page size is a preference, never $top (which would cut the round short).
                # Immutable ids survive moves between folders, so a move is not a delete + add.
                "Prefer": f'odata.maxpagesize={page_size}, IdType="ImmutableId"',
            },
        )
        # Every Graph request of this instance holds a slot while it is in flight.
        self._slots = threading.BoundedSemaphore(max_in_flight)

    def close(self) -> None:
        self._http.close()
        self._pool.release()

    def get(
        self,
        url: str,
        policies: tuple[RetryPolicy, ...],
        sleep: Callable[[float], None],
    ) -> dict[str, Any]:
        """GET a Graph URL as JSON, 429s and transient failures retried per `policies` (waits
        through `sleep`); past them a TransientProviderError carrying any Retry-After. Raises
        _SyncStateGone for lost delta state."""
        try:
            return retrying(*policies, sleep=sleep, on_retry=_log_retry)(self.get_once, url)
        except (_Throttled, _Retryable) as exc:
            raise TransientProviderError(str(exc), retry_after=exc.retry_after) from exc

    def get_once(self, url: str) -> dict[str, Any]:
        retried_auth = False
        while True:
            token = self._tokens.access_token()
            headers = {"Authorization": f"Bearer {token}", "client-request-id": str(uuid.uuid4())}
            with self._slots:
                try:
                    response = self._http.get(url, headers=headers)
                except httpx.TimeoutException as exc:
                    raise _Retryable("Microsoft Graph timed out") from exc
                except httpx.TransportError as exc:
                    if caused_by_tls_verification(exc):
                        # A certificate problem is configuration; retrying will not fix it.
                        raise ProviderError("TLS verification failed for Microsoft Graph") from exc
                    raise _Retryable(
                        f"could not reach Microsoft Graph ({type(exc).__name__})"
                    ) from exc
            if response.status_code == 401 and not retried_auth:
                # The token may have been revoked or expired early; get a fresh one once.
                retried_auth = True
                self._tokens.drop(token)
                continue
            if response.status_code == 200:
                try:
                    body = response.json()
                except ValueError as exc:
                    raise _Retryable("Microsoft Graph sent malformed JSON") from exc
                if not isinstance(body, dict):
                    raise _Retryable("Microsoft Graph sent an unexpected body")
                return body
            raise_for_graph(response)


def _log_retry(error: BaseException, seconds: float, retry: int) -> None:
    if isinstance(error, _Throttled):
        logger.info("microsoft: throttled (%s), retry %d in %.2fs", error, retry, seconds)
    else:
        logger.info("microsoft: %s; retry %d in %.2fs", error, retry, seconds)
