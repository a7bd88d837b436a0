"""The one assembler of a local stack (`mailsync up`, the tests, bench/): a spec in, processes up.

A `StackSpec` says what runs: the application database, the Prefect server (started here, or
one already running), the deployments, how many workers of which type, the API (always served
with `api_server.api_server_options`), and the fake providers (a child process, or ones the
caller already runs). `start_stack` brings the pieces up in order, each once the previous one
is healthy, and stops every process it started when its block exits. A Prefect server it starts
refuses every API call without the stack's auth string, which each child gets by environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mailsync.devstack.api_server import API_APP, api_command
from mailsync.devstack.fakes import Fakes, start_fakes
from mailsync.devstack.processes import (
    Child,
    Stack,
    http_ok,
    port_free,
    prefect_env,
    start_prefect_server,
    start_worker,
    wait_for_workers,
    wait_until,
    worker_name,
)
from mailsync.errors import StackError
from mailsync.settings import Settings, new_prefect_auth_string


class Progress(Protocol):
    """Where the assembler says what it is waiting for (`rich.console.Console` is one)."""

    def status(self, status: str) -> AbstractContextManager[Any]: ...

    def print(self, *objects: Any) -> None: ...


class Quiet:
    """Progress that says nothing (tests, bench/)."""

    def status(self, status: str) -> AbstractContextManager[Any]:
        return nullcontext()

    def print(self, *objects: Any) -> None:
        pass


@dataclass(frozen=True)
class ApiSpec:
    """The API as a child process: uvicorn on `settings.api_host`:`port`, serving `app` (an
    app factory) with the uvicorn options of `settings`."""

    settings: Settings
    port: int
    app: str = API_APP


@dataclass(frozen=True)
class FakesProcess:
    """Start the fake providers as a child process, `seed_messages` in each new mailbox."""

    seed_messages: int = 3000


@dataclass(frozen=True)
class StackSpec:
    """What one local stack runs.

    `workdir` holds the logs (`workdir/logs/<process>.log`) and the Prefect home
    (`workdir/prefect`). Prefect: a server started on `prefect_port`, or the running one at
    `prefect_url` (then `prefect_port` is ignored). Every child gets `base_env` (default: this
    process's environment), Prefect's settings, then `prefect_settings` (its database, say),
    the application's data dir and database, the fakes' endpoints, then `env`.

    `prefect_auth_string`: the Prefect API's auth string (`mailsync up`'s is kept in its data
    dir). Unset, a server started here gets a new one; a running one is called without.
    """

    workdir: Path
    data_dir: Path | None = None
    database_url: str | None = None
    prefect_port: int = 4200
    prefect_url: str | None = None
    prefect_settings: Mapping[str, str] = field(default_factory=dict)
    prefect_auth_string: str | None = field(default=None, repr=False)
    deployments: bool = True  # register prefect.yaml's deployments
    schedules: bool = True  # and activate their schedules (`mailsync up` only)
    work_pool: str = "mailsync"
    workers: int = 1
    worker_type: str = "warm"  # a key of processes.WORKER_TYPES
    worker_limit: int | None = None
    api: ApiSpec | None = None
    fakes: Fakes | FakesProcess | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    base_env: Mapping[str, str] | None = None

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def prefect_home(self) -> Path:
        return self.workdir / "prefect"

    def child_env(self, fakes: Fakes | None, auth_string: str | None = None) -> dict[str, str]:
        """The environment every child process of the stack starts with; `auth_string`, the
        Prefect API's (LocalStack's, default the spec's), as PREFECT_API_AUTH_STRING."""
        local_prefect = f"http://127.0.0.1:{self.prefect_port}/api"
        app: dict[str, str] = {}
        if self.data_dir is not None:
            app["MAILSYNC_DATA_DIR"] = str(self.data_dir)
        if self.database_url is not None:
            app["MAILSYNC_DATABASE_URL"] = self.database_url
        env = {
            **(os.environ if self.base_env is None else self.base_env),
            **prefect_env(
                self.prefect_home,
                self.prefect_url or local_prefect,
                auth_string or self.prefect_auth_string,
            ),
            **self.prefect_settings,
            **app,
            **(fakes.env() if fakes is not None else {}),
            **self.env,
        }
        return env


@dataclass
class LocalStack:
    """One stack of `spec`: `start` brings it up, `stop` stops every process it started."""

    spec: StackSpec
    processes: Stack = field(init=False)
    prefect_api_url: str = ""
    # What the stack's Prefect clients send (the spec's; a new one for a server started here).
    prefect_auth_string: str | None = field(init=False, default=None, repr=False)
    api_url: str | None = None
    fakes: Fakes | None = None

    def __post_init__(self) -> None:
        if isinstance(self.spec.fakes, Fakes):
            self.fakes = self.spec.fakes
        self.prefect_auth_string = self.spec.prefect_auth_string
        if self.prefect_auth_string is None and not self.spec.prefect_url:
            self.prefect_auth_string = new_prefect_auth_string()
        env = self.spec.child_env(self.fakes, self.prefect_auth_string)
        self.processes = Stack(self.spec.log_dir, env)

    def start(self, progress: Progress | None = None) -> None:
        """Start what the spec says, in order (fakes, Prefect, deployments, workers, API),
        each once the one before answers. StackError when a piece does not come up; what
        did start is left running for `stop`."""
        progress = progress or Quiet()
        spec, processes = self.spec, self.processes
        if isinstance(spec.fakes, FakesProcess):
            with progress.status("starting the fake Gmail and Microsoft servers"):
                tls_dir = (spec.data_dir or spec.workdir) / "fakes-tls"
                self.fakes = start_fakes(processes, tls_dir, spec.fakes.seed_messages)
            processes.env.update(self.fakes.env())
            if spec.api is not None:
                # The demo's consent flow: mailsync registered with the fakes, as an operator
                # registers it with Google and Entra (README, Connecting mailboxes).
                from mailsync.devstack.demo import consent_env

                api = f"http://{spec.api.settings.api_host}:{spec.api.port}"
                processes.env.update(consent_env(self.fakes, api))
        self.prefect_api_url = api_url = self._prefect(progress)
        processes.env["PREFECT_API_URL"] = api_url
        if spec.deployments:
            from deployments.register import register

            register(
                api_url,
                work_pool=spec.work_pool,
                activate_schedules=spec.schedules,
                auth_string=self.prefect_auth_string,
            )
        for index in range(spec.workers):
            start_worker(processes, spec.work_pool, index, spec.worker_limit, spec.worker_type)
        if spec.workers:
            with progress.status("waiting for the Prefect workers"):
                names = [worker_name(i) for i in range(spec.workers)]
                auth = self.prefect_auth_string
                wait_for_workers(processes, api_url, auth, spec.work_pool, names)
        if spec.api is not None:
            command = api_command(spec.api.settings, spec.api.port, spec.api.app)
            processes.spawn("api", command, {"MAILSYNC_PREFECT_API_URL": api_url})
            self.api_url = f"http://{spec.api.settings.api_host}:{spec.api.port}"
            with progress.status("waiting for the API"):
                wait_until(http_ok(f"{self.api_url}/health"), "the API", 60, processes)

    def _prefect(self, progress: Progress) -> str:
        spec = self.spec
        if spec.prefect_url:
            external = spec.prefect_url
            wait_until(http_ok(f"{external.rstrip('/')}/health"), f"Prefect at {external}", 30)
            progress.print(f"using the Prefect server at {external}")
            return external
        if not port_free(spec.prefect_port):
            raise StackError(
                f"port {spec.prefect_port} is taken; set PREFECT_API_URL to use a running "
                "Prefect server, or MAILSYNC_PREFECT_PORT to start one elsewhere"
            )
        with progress.status("starting the Prefect server (first start takes ~20 s)"):
            assert self.prefect_auth_string is not None  # __post_init__: a server gets one
            return start_prefect_server(self.processes, spec.prefect_port, self.prefect_auth_string)

    def check(self) -> None:
        """Raise StackError when any of its processes has exited."""
        self.processes.check()

    def workers(self) -> list[Child]:
        """Its workers still running, oldest first."""
        return [
            c
            for c in self.processes.children
            if c.name.startswith("worker-") and c.process.poll() is None
        ]

    def start_worker(self, index: int) -> Child:
        """One more worker (`mailsync-<host>-<pid>-<index>`), once it beats in its pool: the
        replacement of one that died, in the drills."""
        spec = self.spec
        child = start_worker(
            self.processes, spec.work_pool, index, spec.worker_limit, spec.worker_type
        )
        auth = self.prefect_auth_string
        wait_for_workers(
            self.processes, self.prefect_api_url, auth, spec.work_pool, [worker_name(index)]
        )
        return child

    def restart_prefect_server(self) -> None:
        """Stop the Prefect server it started and start it again on the same port (its
        database and lease storage kept): what the drills do to a server mid-run."""
        if self.spec.prefect_url:
            raise StackError("this stack uses a Prefect server it did not start")
        children = self.processes.children
        server = next(c for c in children if c.name == "prefect-server")
        place = children.index(server)
        self.processes.stop_child(server)
        assert self.prefect_auth_string is not None  # __post_init__: a server gets one
        start_prefect_server(self.processes, self.spec.prefect_port, self.prefect_auth_string)
        children.insert(place, children.pop())  # stopped in the same order as before

    def stop(self) -> None:
        """Stop every process it started, in reverse order."""
        self.processes.stop()


@contextmanager
def start_stack(spec: StackSpec, progress: Progress | None = None) -> Iterator[LocalStack]:
    """The stack of `spec`, started (`LocalStack.start`), until the block exits; then every
    process it started is stopped, however the block or the start ended."""
    stack = LocalStack(spec)
    try:
        stack.start(progress)
        yield stack
    finally:
        stack.stop()
