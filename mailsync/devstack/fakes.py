"""The fake providers of a local stack: started (as a process or in threads), and pointed at.

Imports mailsync.fakes (the demo extra) only when fakes are started: `mailsync up` without
--demo does not need them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsync.devstack.processes import Stack, free_port, http_ok, wait_until

if TYPE_CHECKING:
    from mailsync.fakes.tls import FakeTLS


@dataclass(frozen=True)
class Fakes:
    """Where running fake providers answer, and the CA their certificates chain to."""

    gmail_url: str
    microsoft_url: str
    ca_path: Path

    def env(self) -> dict[str, str]:
        """Settings that point mailsync at the fakes instead of Google and Microsoft."""
        return {
            "MAILSYNC_GOOGLE_TOKEN_URI": f"{self.gmail_url}/token",
            "MAILSYNC_GOOGLE_AUTH_URI": f"{self.gmail_url}/o/oauth2/v2/auth",
            "MAILSYNC_GMAIL_API_URL": f"{self.gmail_url}/",
            "MAILSYNC_MICROSOFT_AUTHORITY_HOST": self.microsoft_url,
            "MAILSYNC_GRAPH_API_URL": f"{self.microsoft_url}/v1.0",
            "MAILSYNC_PROVIDER_CA_BUNDLE": str(self.ca_path),
            # Push tokens of the fake Pub/Sub are signed by the fake Gmail's key.
            "MAILSYNC_GMAIL_PUSH_CERTS_URL": f"{self.gmail_url}/oauth2/v1/certs",
            # The demo's fake Gmail enforces no quota; pacing to Google's 15,000 units a
            # minute would make the first sync of 3,000 messages take a minute.
            "MAILSYNC_GMAIL_QUOTA_UNITS_PER_MINUTE": os.environ.get(
                "MAILSYNC_GMAIL_QUOTA_UNITS_PER_MINUTE", "600000"
            ),
        }


def start_fakes(stack: Stack, tls_dir: Path, seed_messages: int, timeout: float = 30) -> Fakes:
    """Both fakes in one child process of `stack` (this module's `main`), once they answer."""
    from mailsync.fakes.tls import ensure_tls

    tls = ensure_tls(tls_dir)
    gmail_port, microsoft_port = free_port(), free_port()
    stack.spawn(
        "fakes",
        [
            sys.executable, "-m", "mailsync.devstack.fakes",
            "--gmail-port", str(gmail_port),
            "--microsoft-port", str(microsoft_port),
            "--seed-messages", str(seed_messages),
            "--tls-dir", str(tls.ca_path.parent),
        ],
    )  # fmt: skip
    fakes = Fakes(
        f"https://127.0.0.1:{gmail_port}", f"https://127.0.0.1:{microsoft_port}", tls.ca_path
    )
    for url in (fakes.gmail_url, fakes.microsoft_url):
        probe = http_ok(f"{url}/_admin/stats", str(tls.ca_path))
        wait_until(probe, "fake providers", timeout, stack)
    return fakes


@contextmanager
def fakes_in_threads(
    tls: FakeTLS,
    seed_messages: int,
    gmail: dict[str, Any] | None = None,
    microsoft: dict[str, Any] | None = None,
) -> Iterator[Fakes]:
    """Both fakes over HTTPS in threads of this process until the block exits (for tests
    and benchmarks that drive them directly); `gmail` / `microsoft` are more arguments of
    their `create_app`."""
    from mailsync.fakes import gmail as fake_gmail
    from mailsync.fakes import microsoft as fake_microsoft
    from mailsync.fakes.server import serve_in_thread

    with ExitStack() as servers:
        gmail_app = fake_gmail.create_app(seed_messages=seed_messages, **(gmail or {}))
        microsoft_app = fake_microsoft.create_app(seed_messages=seed_messages, **(microsoft or {}))
        gmail_url = servers.enter_context(serve_in_thread(gmail_app, tls))
        microsoft_url = servers.enter_context(serve_in_thread(microsoft_app, tls))
        yield Fakes(gmail_url, microsoft_url, tls.ca_path)


def serve(gmail_port: int, microsoft_port: int, seed_messages: int, tls_dir: Path) -> None:
    """Serve both fakes in this process until interrupted (`mailsync fakes`)."""
    from mailsync.fakes import gmail, microsoft
    from mailsync.fakes.server import serve_forever
    from mailsync.fakes.tls import ensure_tls

    tls = ensure_tls(tls_dir)
    serve_forever(
        [
            (gmail.create_app(seed_messages=seed_messages), gmail_port),
            (microsoft.create_app(seed_messages=seed_messages), microsoft_port),
        ],
        tls,
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m mailsync.devstack.fakes`: the child process `start_fakes` spawns."""
    parser = argparse.ArgumentParser(description=serve.__doc__)
    parser.add_argument("--gmail-port", type=int, required=True)
    parser.add_argument("--microsoft-port", type=int, required=True)
    parser.add_argument("--seed-messages", type=int, required=True)
    parser.add_argument("--tls-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    serve(args.gmail_port, args.microsoft_port, args.seed_messages, args.tls_dir)


if __name__ == "__main__":
    main()
