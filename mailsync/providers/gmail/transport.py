"""Gmail's HTTP: httplib2 transports pooled per process, leases on them, the discovery document."""

from __future__ import annotations

import functools
import json
import select
import ssl
from typing import Any

import httplib2
from googleapiclient.discovery_cache import get_static_doc

from mailsync.providers import pools
from mailsync.providers.base import ProviderError


@functools.cache
def _static_discovery() -> str:
    doc = get_static_doc("gmail", "v1")
    if doc is None:  # pragma: no cover - the document ships inside google-api-python-client
        raise RuntimeError("google-api-python-client lacks its bundled gmail v1 discovery document")
    return doc


def preload() -> None:
    """Read the bundled discovery document now (a process that forks runs does it for all)."""
    _static_discovery()


def discovery_for(api_url: str) -> dict[str, Any]:
    """The bundled discovery document pointed at `api_url`; the batch URL is derived from
    rootUrl + batchPath, which client_options' api_endpoint would leave at production."""
    root = api_url.rstrip("/") + "/"
    # Parsed afresh for every provider: build_from_document writes into the method
    # descriptions as resources are built, so one parsed copy cannot serve several threads.
    doc: dict[str, Any] = json.loads(_static_discovery())
    doc.update(rootUrl=root, baseUrl=root, mtlsRootUrl=root, batchPath="batch/gmail/v1")
    return doc


# -- transports, reused across the mailboxes of a process --------------------------------------

# Idle transports kept per (ca_bundle, timeout): a refresh round syncs 16 mailboxes at once.
MAX_IDLE_TRANSPORTS = 32


def _settings(http: httplib2.Http) -> dict[str, Any]:
    """Everything an Http holds besides its connections (which hold no credentials: the
    Authorization header is added per request by AuthorizedHttp)."""
    state = {name: value for name, value in vars(http).items() if name != "connections"}
    state["credentials"] = list(http.credentials.credentials)
    state["certificates"] = list(http.certificates.credentials)
    return state


def _unusable(sock: Any) -> bool:
    """Whether an idle kept-alive socket has something to read: the server's close, a reset,
    or bytes nobody asked for. httplib2 would only find out by failing its next request."""
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class TransportPool:
    """Idle httplib2.Http transports of one (ca_bundle, timeout), each with its connections.

    httplib2.Http is not thread-safe, so a provider has one to itself from construction to
    close() instead of sharing one. A transport comes back scrubbed of httplib2's own
    credential store; one that differs from a new one in anything else is closed, not kept."""

    def __init__(self, ca_bundle: str | None, timeout: float) -> None:
        self._ca_bundle = ca_bundle
        self._timeout = timeout
        self._fresh = _settings(self._new())
        self._idle: pools.IdlePool[httplib2.Http] = pools.IdlePool(MAX_IDLE_TRANSPORTS)

    def __len__(self) -> int:
        return len(self._idle)

    def _new(self) -> httplib2.Http:
        # An explicit ca_certs wins over HTTPLIB2_CA_CERTS and friends in the environment.
        return httplib2.Http(ca_certs=self._ca_bundle, timeout=self._timeout)

    def checkout(self) -> httplib2.Http:
        http = self._idle.take()
        if http is None:
            return self._new()
        for key, conn in list(http.connections.items()):
            sock = getattr(conn, "sock", None)
            if sock is not None and _unusable(sock):
                conn.close()
                del http.connections[key]
        return http

    def checkin(self, http: httplib2.Http, *, clean: bool) -> None:
        if clean:
            http.clear_credentials()
            http.certificates.clear()
        else:
            http.close()  # every connection, and the same scrubbing
        if _settings(http) != self._fresh or not self._idle.give(http):
            http.close()

    def close(self) -> None:
        for http in self._idle.drain():
            http.close()


TRANSPORTS: pools.Pooled[TransportPool] = pools.Pooled(
    "gmail transports", dispose=TransportPool.close
)


class Lease:
    """A provider's hold on a pooled transport. Everything of the provider (the API client,
    token refreshes) calls through the lease, so giving the transport back cuts all of them
    off at once: a closed provider cannot reach a transport another mailbox now uses."""

    def __init__(self, http: httplib2.Http) -> None:
        self.http: httplib2.Http | None = http
        self.clean = True

    def request(self, *args: Any, **kwargs: Any) -> Any:
        http = self.http
        if http is None:
            raise ProviderError("this gmail provider is closed")
        try:
            return http.request(*args, **kwargs)
        except BaseException:
            # httplib2 raises only below HTTP (an answer with any status is returned). A timeout
            # or a broken read can leave an answer unread on a kept-alive connection, where the
            # next mailbox would read it as the answer to its own request.
            self.clean = False
            raise

    def close(self) -> None:
        pass  # AuthorizedHttp.close() would get here; the provider's close() decides
