"""What Microsoft provider instances of a process share: TLS contexts, connections, discovery."""

from __future__ import annotations

import os
import ssl
from typing import Any

import certifi
import httpx
from requests.adapters import HTTPAdapter

from mailsync.providers import pools

# Never tokens, token caches or msal's memory of failed requests (see IdentitySession).

# Graph requests in flight at once in a refresh round: 16 mailboxes x 4 requests each. Kept-alive
# connections beyond it would only be closed again.
_GRAPH_KEEPALIVE = 64
_IDENTITY_KEEPALIVE = 32  # token requests are one at a time per mailbox
# A tenant's OpenID configuration names its endpoints and practically never changes; msal keeps
# it a day per application, a process-wide copy less, since it outlives every application.
_DISCOVERY_TTL = 3600.0
DISCOVERY_PATH = "/.well-known/openid-configuration"


_SSL_CONTEXTS: pools.Shared[ssl.SSLContext] = pools.Shared("microsoft tls contexts")
_GRAPH_POOLS: pools.Pooled[httpx.HTTPTransport] = pools.Pooled(
    "microsoft graph connections", dispose=lambda transport: transport.close()
)
_IDENTITY_POOLS: pools.Pooled[SharedAdapter] = pools.Pooled(
    "microsoft identity connections", dispose=lambda adapter: adapter.shutdown()
)
DISCOVERY: pools.Expiring[tuple[bytes, dict[str, str], str | None]] = pools.Expiring(
    "microsoft tenant discovery", ttl=_DISCOVERY_TTL, capacity=1024
)


def ca_key(ca_bundle: str | None) -> tuple[Any, ...] | None:
    """A CA file as a cache key: a file replaced while the process runs is a new key, so the
    next provider trusts what the file says now, as it did when every provider read it."""
    if not ca_bundle:
        return None
    try:
        stat = os.stat(ca_bundle)
    except OSError:
        return (ca_bundle,)  # loading it fails below, as it always did; nothing is cached
    return (ca_bundle, stat.st_mtime_ns, stat.st_size)


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext | bool:
    """certifi's roots plus `ca_bundle`; loading them is most of a provider's construction cost."""
    if not ca_bundle:
        return True

    def make() -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=certifi.where())
        context.load_verify_locations(cafile=ca_bundle)
        return context

    return _SSL_CONTEXTS.get(ca_key(ca_bundle), make)


class BorrowedTransport(httpx.BaseTransport):
    """An httpx.Client's way into the process's Graph connection pool: the client keeps its own
    headers, timeouts and auth, and closing it leaves the pool to the other clients."""

    def __init__(self, pool: httpx.BaseTransport) -> None:
        self._pool = pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._pool.handle_request(request)

    def close(self) -> None:
        pass


def graph_pool(
    graph_base: str, ca_bundle: str | None, timeout: float
) -> pools.Loan[httpx.HTTPTransport]:
    def make() -> httpx.HTTPTransport:
        return httpx.HTTPTransport(
            verify=ssl_context(ca_bundle),
            trust_env=False,
            # No cap on connections: each client was uncapped in effect (4 requests in flight);
            # a shared cap would make one mailbox's requests wait for another's.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=_GRAPH_KEEPALIVE),
        )

    return _GRAPH_POOLS.borrow((graph_base, ca_key(ca_bundle), timeout), make)


class SharedAdapter(HTTPAdapter):
    """The process's connections to the identity platform, mounted on every IdentitySession.
    urllib3 keys its pools by host and TLS settings, so sessions never get each other's
    connections to somewhere else, and requests carry no credentials between them: msal puts
    the client secret and grant in each request's body."""

    def close(self) -> None:
        pass  # a session closes after its mailbox; the pool serves the next one

    def shutdown(self) -> None:
        super().close()


def identity_pool(ca_bundle: str | None) -> pools.Loan[SharedAdapter]:
    return _IDENTITY_POOLS.borrow(
        ca_key(ca_bundle), lambda: SharedAdapter(pool_maxsize=_IDENTITY_KEEPALIVE)
    )
