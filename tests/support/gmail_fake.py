"""A client of the fake Gmail's admin surface, shared by the Gmail provider tests."""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

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
    admin: httpx.Client
    prefix: str = "user"
    counter: Iterator[int] = field(default_factory=itertools.count)

    def mailbox(self, messages: int | None = None) -> tuple[str, dict[str, Any]]:
        address = f"{self.prefix}{next(self.counter)}@example.com"
        resp = self.admin.post("/_admin/mailboxes", json={"address": address, "messages": messages})
        resp.raise_for_status()
        return address, resp.json()["credentials"]

    def ids(self, address: str) -> list[str]:
        ids: list[str] = self.admin.get(f"/_admin/mailboxes/{address}/messages").json()["ids"]
        return ids

    def add(self, address: str, count: int) -> list[str]:
        resp = self.admin.post(f"/_admin/mailboxes/{address}/messages", json={"count": count})
        ids: list[str] = resp.json()["ids"]
        return ids

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.admin.get("/_admin/stats").json()["requests"]
        return stats

    def reset(self) -> None:
        self.admin.post("/_admin/stats/reset").raise_for_status()

    def fault(
        self, operation: str, status: int, count: int = 1, retry_after: int | None = None
    ) -> None:
        spec = {"operation": operation, "status": status, "count": count}
        self.admin.post(
            "/_admin/faults", json={**spec, "retry_after": retry_after}
        ).raise_for_status()

    def provider(self, address: str, credentials: dict[str, Any], **kwargs: Any) -> GmailProvider:
        return GmailProvider(address, credentials, self.endpoints, **kwargs)


@contextmanager
def serve_gmail(
    tls: FakeTLS, fake_type: type[GmailFake] = GmailFake, **app_kwargs: Any
) -> Iterator[Any]:
    """The fake Gmail over HTTPS and an admin client for it."""
    verify = ssl.create_default_context(cafile=str(tls.ca_path))
    with (
        serve_in_thread(create_app(**app_kwargs), tls) as base,
        httpx.Client(base_url=base, verify=verify, trust_env=False, timeout=30) as admin,
    ):
        endpoints = ProviderEndpoints(
            google_token_uri=f"{base}/token", gmail_api_url=f"{base}/", ca_bundle=str(tls.ca_path)
        )
        try:
            yield fake_type(base, endpoints, admin)
        finally:
            # Pooled connections would keep the server's shutdown waiting on them.
            pools.close_all()
