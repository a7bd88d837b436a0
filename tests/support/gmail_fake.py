"""The fake Gmail served for the Gmail provider tests, with its typed admin client."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mailsync.fakes.client import GmailAdmin
from mailsync.fakes.gmail import create_app
from mailsync.fakes.server import serve_in_thread
from mailsync.fakes.tls import FakeTLS
from mailsync.providers import pools
from mailsync.providers.base import ProviderEndpoints
from mailsync.providers.gmail import GmailProvider


@dataclass
class GmailFake:
    base: str
    endpoints: ProviderEndpoints
    admin: GmailAdmin  # the /_admin surface (mailsync.fakes.client)
    prefix: str = "user"
    counter: Iterator[int] = field(default_factory=itertools.count)

    def mailbox(self, messages: int | None = None) -> tuple[str, dict[str, Any]]:
        """A new mailbox's address and its credentials as GmailProvider takes them."""
        address = f"{self.prefix}{next(self.counter)}@example.com"
        return address, self.admin.create_mailbox(address, messages).provider_credentials()

    def ids(self, address: str) -> list[str]:
        return self.admin.ids(address)

    def add(self, address: str, count: int) -> list[str]:
        return self.admin.add_messages(address, count)

    def stats(self) -> dict[str, int]:
        return self.admin.stats()

    def reset(self) -> None:
        self.admin.reset_stats()

    def fault(
        self, operation: str, status: int, count: int = 1, retry_after: int | None = None
    ) -> None:
        self.admin.fail(operation, status, count=count, retry_after=retry_after)

    def provider(self, address: str, credentials: dict[str, Any], **kwargs: Any) -> GmailProvider:
        return GmailProvider(address, credentials, self.endpoints, **kwargs)


@contextmanager
def serve_gmail(
    tls: FakeTLS, fake_type: type[GmailFake] = GmailFake, **app_kwargs: Any
) -> Iterator[Any]:
    """The fake Gmail over HTTPS and an admin client for it."""
    with (
        serve_in_thread(create_app(**app_kwargs), tls) as base,
        GmailAdmin(base, tls.ca_path) as admin,
    ):
        endpoints = ProviderEndpoints(
            google_token_uri=f"{base}/token", gmail_api_url=f"{base}/", ca_bundle=str(tls.ca_path)
        )
        try:
            yield fake_type(base, endpoints, admin)
        finally:
            # Pooled connections would keep the server's shutdown waiting on them.
            pools.close_all()
