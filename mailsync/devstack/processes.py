"""Starts and stops the local stack's processes: Prefect server, workers, the API, the fakes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mailsync.errors import StackError

PROJECT_DIR = Path(__file__).resolve().parents[2]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Stack:
    """The child processes of one local stack, stopped in reverse order."""

    log_dir: Path
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self.env, **(extra_env or {})},
            cwd=str(PROJECT_DIR),
            start_new_session=True,  # Ctrl-C reaches us once; we stop children in order
        )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def check(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise StackError(f"{child.name} exited with status {code}; see {child.log_path}")

    def stop_child(self, child: Child, timeout: float = 15) -> None:
        """Stop one child (SIGTERM to its process group, SIGKILL after `timeout`) and forget it."""
        if child.process.poll() is None:
            try:
                os.killpg(child.process.pid, signal.SIGTERM)
                child.process.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        self.children.remove(child)

    def stop(self, timeout: float = 15) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                try:
                    os.killpg(child.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        self.children.clear()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now: take it soon)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether nothing answers on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_until(
    probe: Callable[[], bool], what: str, timeout: float, stack: Stack | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack is not None:
            stack.check()
        try:
            if probe():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.25)
    raise StackError(f"{what} did not become healthy within {timeout:.0f} s")


def http_ok(url: str, verify: str | bool = True) -> Callable[[], bool]:
    def probe() -> bool:
        return httpx.get(url, timeout=2, verify=verify, trust_env=False).status_code == 200

    return probe


# A CA bundle no TLS server can match (the file says why): for a Prefect API on plain HTTP.
NO_TLS_TRUST = Path(__file__).resolve().parents[1] / "orchestration" / "no_tls_trust.pem"


def prefect_env(prefect_home: Path, api_url: str, auth_string: str | None) -> dict[str, str]:
    """Prefect settings shared by the server, the workers and flow runs. The auth string goes
    to the environment only: a command line is readable by every user of the machine."""
    trust: dict[str, str] = {}
    if auth_string:
        trust["PREFECT_API_AUTH_STRING"] = auth_string
    if api_url.startswith("http://") and not os.environ.get("PREFECT_API_SSL_CERT_FILE"):
        # Prefect's client loads its CA bundle into a TLS context for every client it opens,
        # even for http:// (certifi's: ~30 ms each, several per flow run). Over plain HTTP
        # nothing is verified; and should the URL become https, this bundle fails closed.
        trust["PREFECT_API_SSL_CERT_FILE"] = str(NO_TLS_TRUST)
    return {
        **trust,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": (
            "prefect.server.concurrency.lease_storage.filesystem"
        ),
        "MAILSYNC_PROJECT_DIR": str(PROJECT_DIR),
        # The server runs without CSRF protection (Prefect's default): a client that looks for
        # a token first asks /csrf-token and is refused, once per client a process opens.
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": os.environ.get(
            "PREFECT_SERVER_CSRF_PROTECTION_ENABLED", "false"
        ),
    }


# How long a Prefect server or worker may take to come up: a fresh server migrates its database
# first, which took over 90 s on a loaded 2-core machine. A process that exits fails at once.
START_TIMEOUT_S = 300.0


def start_prefect_server(
    stack: Stack, port: int, auth_string: str, timeout: float = START_TIMEOUT_S
) -> str:
    """Prefect's server on loopback, refusing every API call without `auth_string` (401; its
    UI asks for it); `/health` stays open for the probes."""
    api_url = f"http://127.0.0.1:{port}/api"
    stack.spawn(
        "prefect-server",
        [
            sys.executable,
            "-m",
            # `prefect server start`, with SQLite writers that wait for each other instead of
            # failing with 503s the clients retry ~2 s later (see the module).
            "mailsync.orchestration.prefect_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        {"PREFECT_SERVER_API_AUTH_STRING": auth_string},
    )
    wait_until(http_ok(f"{api_url}/health"), "the Prefect server", timeout, stack)
    return api_url


def worker_name(index: int) -> str:
    return f"mailsync-{socket.gethostname()}-{os.getpid()}-{index}"


# `mailsync up --worker-type`: the Prefect worker type of each name. Both serve the `process`
# work pool prefect.yaml declares (README, "Workers").
WORKER_TYPES = {"warm": "mailsync-warm", "process": "process"}


def start_worker(
    stack: Stack,
    pool: str,
    index: int = 0,
    limit: int | None = None,
    worker_type: str = "warm",
    extra_env: dict[str, str] | None = None,
) -> Child:
    """A worker serving `pool`; `limit` caps the flow runs it runs at once. `worker_type` is a
    key of WORKER_TYPES: "warm" forks each run from a pre-warmed parent
    (mailsync/orchestration/warm_worker.py), "process" is Prefect's stock process worker."""
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
    argv += ["--type", WORKER_TYPES[worker_type], "--name", worker_name(index)]
    if limit is not None:
        argv += ["--limit", str(limit)]
    return stack.spawn(f"worker-{index}", argv, extra_env)


def wait_for_workers(
    stack: Stack,
    api_url: str,
    auth_string: str | None,
    pool: str,
    names: list[str],
    timeout: float = START_TIMEOUT_S,
) -> None:
    """Block until every named worker has sent its first heartbeat to the pool."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api_url, auth_string=auth_string) as client:

        def online() -> bool:
            seen = {w.name for w in client.read_workers_for_work_pool(pool) if w.status == "ONLINE"}
            return set(names) <= seen

        wait_until(online, "the Prefect workers", timeout, stack)
