"""A client of the fake Microsoft identity + Graph admin surface, shared by the provider tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from mailsync.fakes.microsoft import create_app
from mailsync.fakes.server import serve_in_thread
from mailsync.fakes.tls import FakeTLS
from mailsync.providers import pools
from mailsync.providers.base import ProviderEndpoints


@dataclass
class MicrosoftFake:
    base: str
    admin: httpx.Client
    endpoints: ProviderEndpoints

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.admin.get("/_admin/stats").json()["requests"]
        return stats

    def reset(self) -> None:
        """Counts and faults are per fake: start from zero, with no pending faults."""
        self.admin.post("/_admin/stats/reset").raise_for_status()

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.admin.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None


@contextmanager
def serve_microsoft(
    tls: FakeTLS, fake_type: type[MicrosoftFake] = MicrosoftFake, **app_kwargs: Any
) -> Iterator[Any]:
    """The fake Microsoft identity + Graph over HTTPS and an admin client for it."""
    with (
        serve_in_thread(create_app(**app_kwargs), tls) as base,
        httpx.Client(base_url=base, verify=str(tls.ca_path), trust_env=False, timeout=30) as admin,
    ):
        endpoints = ProviderEndpoints(
            microsoft_authority_host=base,
            graph_api_url=f"{base}/v1.0",
            ca_bundle=str(tls.ca_path),
        )
        try:
            yield fake_type(base, admin, endpoints)
        finally:
            # Pooled connections would keep the server's shutdown waiting on them.
            pools.close_all()
