"""The fake Microsoft identity + Graph served for the provider tests, with its typed admin
client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mailsync.fakes.client import MicrosoftAdmin
from mailsync.fakes.microsoft import create_app
from mailsync.fakes.server import serve_in_thread
from mailsync.fakes.tls import FakeTLS
from mailsync.providers import pools
from mailsync.providers.base import ProviderEndpoints


@dataclass
class MicrosoftFake:
    base: str
    admin: MicrosoftAdmin  # the /_admin surface (mailsync.fakes.client)
    endpoints: ProviderEndpoints

    def stats(self) -> dict[str, int]:
        return self.admin.stats()

    def reset(self) -> None:
        """Counts and faults are per fake: start from zero, with no pending faults."""
        self.admin.reset_stats()


@contextmanager
def serve_microsoft(
    tls: FakeTLS, fake_type: type[MicrosoftFake] = MicrosoftFake, **app_kwargs: Any
) -> Iterator[Any]:
    """The fake Microsoft identity + Graph over HTTPS and an admin client for it."""
    with (
        serve_in_thread(create_app(**app_kwargs), tls) as base,
        MicrosoftAdmin(base, tls.ca_path) as admin,
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
