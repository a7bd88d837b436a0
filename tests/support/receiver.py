"""Webhook receivers for tests: one that verifies every signature with the README's helper, and
slow ones (dripping, hanging) over raw sockets."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlmodel import Session, select

from mailsync.core import workspaces
from mailsync.core.jobs import store as jobstore
from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import SyncJob, WebhookAttempt, WebhookDelivery, WebhookEndpoint
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


# --- receivers that are slow on purpose ----------------------------------------------


@dataclass
class SlowReceiver:
    """A loopback HTTP "receiver" that reads the request, then either drips its response
    headers one byte every `drip_every` seconds for ever, or (drip_every None) never answers.
    Counts the connections it holds; closing it ends them all."""

    drip_every: float | None
    url: str = ""
    held: int = 0
    most_held: int = 0
    accepted: int = 0
    dripped: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.accepted += 1
            self.held += 1
            self.most_held = max(self.most_held, self.held)
        try:
            conn.settimeout(0.1)
            with contextlib.suppress(TimeoutError):
                conn.recv(65536)  # the request (all of it, most likely: it is not parsed)
            conn.sendall(b"HTTP/1.1 200 OK\r\nx-drip: ")
            while not self.stop.wait(self.drip_every or 0.1):
                if self.drip_every is not None:
                    conn.sendall(b"a")  # a header that never ends, each byte in time
                    with self.lock:
                        self.dripped += 1
        except OSError:
            pass  # the client gave up: what a bound is for
        finally:
            conn.close()
            with self.lock:
                self.held -= 1


@contextmanager
def slow_receiver(drip_every: float | None) -> Iterator[SlowReceiver]:
    state = SlowReceiver(drip_every)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    state.url = f"http://127.0.0.1:{listener.getsockname()[1]}/hooks"

    def accept() -> None:
        while not state.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=state.serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        thread.join(5)
        listener.close()


def in_background(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `work()` in a thread; its result lands in the returned list."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    return thread, out


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


def pending_delivery(settings: Settings, endpoint_id: str) -> WebhookDelivery:
    """The endpoint's oldest delivery (the only one, in most tests)."""
    with Session(get_engine(settings.resolved_database_url)) as session:
        return session.exec(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.created_at)  # type: ignore[arg-type]
        ).first()  # type: ignore[return-value]


def attempts_of(settings: Settings, endpoint_id: str) -> list[WebhookAttempt]:
    """Every logged attempt at any delivery of the endpoint."""
    with Session(get_engine(settings.resolved_database_url)) as session:
        return list(
            session.exec(
                select(WebhookAttempt)
                .join(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == endpoint_id)
            )
        )
