"""A real webhook receiver for tests: verifies every signature with the README's helper."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from mailsync.core import workspaces
from mailsync.core.jobs import store as jobstore
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import SyncJob, WebhookEndpoint
from mailsync.errors import WebhookVerificationError
from mailsync.settings import Settings
from mailsync.webhooks import store
from mailsync.webhooks.signing import verify
from tests.support.stack import ENCRYPTION_KEY
from tests.support.waiting import eventually


@dataclass
class Received:
    webhook_id: str | None
    verified: bool
    answered: int
    body: dict[str, Any] | None
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class Receiver:
    """Answers `fail_first` requests with `fail_status`, then 200; records every request.

    `secret` is set once the endpoint exists; a request whose signature does not verify is
    answered 401 (and recorded as not verified), as a careful receiver would.
    """

    url: str = ""
    secret: str | None = None
    fail_first: int = 0
    fail_status: int = 503
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, headers: dict[str, str], raw: bytes) -> int:
        with self.lock:
            try:
                webhook_id: str | None = verify(self.secret or "", headers, raw)
                verified = True
            except (WebhookVerificationError, ValueError):
                webhook_id, verified = headers.get("webhook-id"), False
            if not verified:
                status = 401
            elif len([r for r in self.requests if r.verified]) < self.fail_first:
                status = self.fail_status
            else:
                status = 200
            body = json.loads(raw) if raw else None
            self.requests.append(Received(webhook_id, verified, status, body, headers, raw))
            return status

    @property
    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.answered == 200]

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        """The accepted deliveries, once there are `count` of them."""
        return eventually(
            lambda: self.accepted,
            f"{count} accepted deliveries",
            timeout,
            0.1,
            until=lambda accepted: len(accepted) >= count,
        )


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.handle(headers, raw)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serve_receiver() -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 (the tests allow loopback URLs), until the block exits."""
    state = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/mailsync"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as state:
        yield state


# --- database helpers -------------------------------------------------------------------


def webhook_settings(database_url: str, data_dir: Path, **extra: Any) -> Settings:
    """Settings for in-process delivery: loopback receivers, retries in milliseconds."""
    values: dict[str, Any] = {
        "webhook_allow_loopback": True,
        "webhook_retry_base_seconds": 0.01,
        "webhook_retry_max_seconds": 0.05,
        "webhook_timeout_seconds": 2.0,
        **extra,
    }
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        encryption_key=SecretStr(ENCRYPTION_KEY),
        **values,
    )


def new_workspace(database_url: str) -> str:
    workspace_id = f"ws-{secrets.token_hex(4)}"
    with session_scope(database_url) as session:
        workspaces.create_workspace(session, workspace_id)
    return workspace_id


def new_endpoint(
    settings: Settings, workspace_id: str, url: str, events: list[str] | None = None
) -> tuple[WebhookEndpoint, str]:
    with session_scope(settings.resolved_database_url) as session:
        return store.create_endpoint(
            session, CredentialBox(settings.fernet_key()), workspace_id, url, events
        )


def running_job(database_url: str, workspace_id: str, **fields: Any) -> str:
    with session_scope(database_url) as session:
        job = SyncJob(workspace_id=workspace_id, mode="incremental", providers=["gmail"], **fields)
        session.add(job)
        session.flush()
        jobstore.mark_running(session, job, None)
        return job.id


def finish_job(database_url: str, job_id: str, error_code: str | None = None) -> None:
    """What a sync's close_job commits (the event with it), without kicking any delivery:
    exactly what a process killed right after the job's end leaves behind."""
    with session_scope(database_url) as session:
        job = session.get(SyncJob, job_id)
        assert job is not None
        jobstore.mark_finished(
            session,
            job,
            counts={"messages_added": 3},
            mailboxes=[
                {
                    "provider": "gmail",
                    "address": "ada@example.com",
                    "requested_mode": "incremental",
                    "performed_mode": "incremental",
                    "reason": None,
                    "counts": {"messages_added": 3},
                }
            ],
            error_code=error_code,
            error_message="boom" if error_code else None,
        )
