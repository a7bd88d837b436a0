"""`prefect worker start --type mailsync-warm`: a process worker forking runs from a warm parent.

The stock process worker starts `python -m prefect.runner._workspace_supervisor`, which runs the
pull steps and execs `python -m prefect.engine`: every run imports Prefect and our flows from
scratch (~5 s of a trivial run's ~7 s). This worker serves the same `process` work pools with the
same job template, but starts each run it can vouch for in a child forked from a pre-warmed,
single-threaded zygote (zygote.py), and polls as soon as Prefect announces a Scheduled run in its
pool. Runs it cannot vouch for take the stock path (`ProcessWorker.run`).

Built for Prefect 3.9.1 (pyproject pins >=3.9.1,<3.10); the private pieces it relies on are
checked by tests/orchestration/test_warm_worker_contract.py.
"""

from __future__ import annotations

import codecs
import copy
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
import yaml
from prefect.client.schemas.objects import FlowRun, WorkPool
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.runner._control_channel import ControlChannel
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._process_manager import ProcessHandle, create_isolated_termination_scope
from prefect.runner._workspace_hook_runner import WorkspaceHookRunner
from prefect.runner._workspace_resolver import _resolve_runtime_entrypoint
from prefect.runner._workspace_runtime import PreparedWorkspaceManifest, write_private_model
from prefect.runner._workspace_supervisor import _hook_command
from prefect.settings import get_current_settings
from prefect.utilities.processutils import get_sys_executable, sanitize_subprocess_env
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from mailsync.orchestration import zygote as zygote_mod
from mailsync.orchestration.poll_schedule import PollSchedule

WORKER_TYPE = "mailsync-warm"
SET_WORKING_DIRECTORY = "prefect.deployments.steps.set_working_directory"
SCHEDULED_EVENT = "prefect.flow-run.Scheduled"
ZYGOTE_READY_SECONDS = 120
_ENV_TEMPLATE = re.compile(r"^\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")


def project_dir() -> Path:
    configured = os.environ.get("MAILSYNC_PROJECT_DIR")
    return Path(configured).resolve() if configured else Path(__file__).resolve().parents[2]


def preloaded_entrypoints(directory: Path) -> list[str]:
    """The flows the zygote imports: prefect.yaml's deployments' entrypoints, plus any in
    MAILSYNC_WARM_EXTRA_ENTRYPOINTS (comma-separated; the tests' probe flow)."""
    declaration = yaml.safe_load((directory / "prefect.yaml").read_text())
    declared = {spec["entrypoint"] for spec in declaration.get("deployments") or []}
    extra = os.environ.get("MAILSYNC_WARM_EXTRA_ENTRYPOINTS", "").split(",")
    return sorted(declared | {e.strip() for e in extra if e.strip()})


class Zygote:
    """The worker's end of the zygote: start it, ask it to fork, read the exit statuses."""

    def __init__(self, directory: Path, entrypoints: list[str]) -> None:
        self.directory = directory
        self.entrypoints = entrypoints
        self.process: subprocess.Popen[bytes] | None = None
        self.probe: dict[str, Any] | None = None
        self.problem: str | None = None
        self._channel: socket.socket | None = None
        self._ready = anyio.Event()

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The reserve goes last: children overwrite it with their environment (zygote.py).
        env = {k: v for k, v in os.environ.items() if k != zygote_mod.ENV_RESERVE_VAR}
        env[zygote_mod.ENV_RESERVE_VAR] = "x" * zygote_mod.ENV_RESERVE_BYTES
        argv = [get_sys_executable(), "-m", "mailsync.orchestration.zygote"]
        argv += [str(theirs.fileno()), str(self.directory), *self.entrypoints]
        # A fresh interpreter (fork+exec), never a fork of this threaded worker.
        self.process = subprocess.Popen(
            argv,
            pass_fds=[theirs.fileno()],
            env=env,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        ours.setblocking(False)
        self._channel = ours

    async def wait_ready(self) -> None:
        """Read the zygote's probe; set `problem` if it cannot be used."""
        assert self._channel is not None
        try:
            with anyio.fail_after(ZYGOTE_READY_SECONDS):
                message = await _receive(self._channel)
        except TimeoutError:
            message = None
            self.problem = f"not ready within {ZYGOTE_READY_SECONDS} s"
        if message is not None:
            self.probe = message.get("probe")
            if not message.get("ready"):
                self.problem = message.get("reason") or f"unsafe to fork from: {self.probe}"
        elif self.problem is None:
            self.problem = "exited before it was ready"
        self._ready.set()

    async def ready(self) -> bool:
        await self._ready.wait()
        return self.problem is None and self.process is not None and self.process.poll() is None

    def loaded(self) -> set[str]:
        return set((self.probe or {}).get("loaded") or [])

    def fork(self, request: dict[str, Any], stdout_fd: int, stderr_fd: int) -> socket.socket:
        """Ask for a child; returns the socket its pid and exit status arrive on."""
        assert self._channel is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._channel.setblocking(True)
            socket.send_fds(
                self._channel,
                [json.dumps(request).encode()],
                [theirs.fileno(), stdout_fd, stderr_fd],
            )
        finally:
            self._channel.setblocking(False)
            theirs.close()
        ours.setblocking(False)
        return ours

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()  # the zygote exits on EOF; forked runs keep their sessions
            self._channel = None
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def _receive(sock: socket.socket) -> dict[str, Any] | None:
    """One message from a non-blocking SEQPACKET socket; None at EOF."""
    while True:
        await anyio.wait_readable(sock)
        try:
            data = sock.recv(zygote_mod.MAX_MESSAGE)
        except BlockingIOError:
            continue
        except OSError:
            return None
        if not data:
            return None
        message: dict[str, Any] = json.loads(data)
        return message


@dataclass
class ForkedProcess:
    """What ProcessHandle reads of a process: a run forked by the zygote, not our child."""

    pid: int
    returncode: int | None = None


@dataclass(kw_only=True)
class ZygoteStarter:
    """A ProcessStarter (prefect.runner._flow_run_executor) that forks the run from the zygote,
    with the environment EngineCommandStarter and the workspace supervisor would give it."""

    zygote: Zygote
    env: Mapping[str, str | None]
    cwd: Path
    entrypoint: str
    stream_output: bool
    control_channel: ControlChannel
    manifest_path: Path

    def environment(self, flow_run: FlowRun, control: Mapping[str, str]) -> dict[str, str]:
        # EngineCommandStarter(env_overrides_settings=True): worker env < settings < job env.
        env: dict[str, str | None] = {**os.environ}
        env.update(get_current_settings().to_environment_variables(exclude_unset=True))
        env.update(self.env)
        env.update(
            {
                "PREFECT__FLOW_RUN_ID": str(flow_run.id),
                "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
                **control,
                "PREFECT__DEPLOYMENT_NAME": env.get("PREFECT__DEPLOYMENT_NAME"),
            }
        )
        environment = sanitize_subprocess_env(env)
        # What the workspace supervisor adds after the pull steps.
        path = [str(self.cwd), *environment.get("PYTHONPATH", "").split(os.pathsep)]
        environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in path if p))
        environment["PREFECT__FLOW_ENTRYPOINT"] = self.entrypoint
        return environment

    async def start(
        self,
        flow_run: FlowRun,
        task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        control: dict[str, str] = {}
        try:
            port, token = self.control_channel.register(flow_run.id)
            control = {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
        except RuntimeError:
            pass  # no loopback listener: kill-only cancellation, as the stock starter does
        handed_off = False
        pipes: list[tuple[int, int]] = []
        try:
            environment = self.environment(flow_run, control)
            hook_env = {
                k: v for k, v in environment.items() if not k.startswith("PREFECT__CONTROL_")
            }
            # The manifest the stock supervisor writes: on_crashed / on_cancellation hooks run
            # from it in a subprocess (WorkspaceHookRunner), exactly as on the stock path.
            write_private_model(
                self.manifest_path,
                PreparedWorkspaceManifest(
                    working_directory=self.cwd,
                    project_root=self.cwd,
                    runtime_entrypoint=self.entrypoint,
                    hook_command=_hook_command([get_sys_executable(), "-m", "prefect.engine"]),
                    environment=hook_env,
                ),
            )
            request = {"env": environment, "cwd": str(self.cwd)}
            # Pipes the worker streams to its own stdout/stderr, as run_process does on the
            # stock path (so a run whose worker died gets a broken pipe there too).
            if self.stream_output:
                pipes = [os.pipe(), os.pipe()]
                try:
                    reply = self.zygote.fork(request, pipes[0][1], pipes[1][1])
                finally:
                    os.close(pipes[0][1])
                    os.close(pipes[1][1])
            else:
                with open(os.devnull, "wb") as devnull:
                    reply = self.zygote.fork(request, devnull.fileno(), devnull.fileno())
            with reply:
                first = await _receive(reply)
                if first is None or "pid" not in first:
                    raise RuntimeError(f"the zygote could not fork the run: {first}")
                process = ForkedProcess(int(first["pid"]), first.get("exit"))
                handle = ProcessHandle(
                    process,  # type: ignore[arg-type]  # duck-typed: pid and returncode
                    termination_scope=create_isolated_termination_scope(process.pid),
                )
                handed_off = True
                task_status.started(handle)
                async with anyio.create_task_group() as streams:
                    for (read_fd, _), sink in zip(pipes, (sys.stdout, sys.stderr), strict=False):
                        streams.start_soon(_stream, read_fd, sink)
                    await _wait_for_exit(reply, process)
        except BaseException:
            if not handed_off:
                for read_fd, _ in pipes:
                    os.close(read_fd)
                if control:
                    self.control_channel.unregister(flow_run.id)
            raise


async def _stream(fd: int, sink: Any) -> None:
    """Copy a child's output pipe to `sink` until EOF (prefect's stream_text, for a raw fd)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    os.set_blocking(fd, False)
    try:
        while True:
            await anyio.wait_readable(fd)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            text = decoder.decode(chunk, final=not chunk)
            if text:
                sink.write(text)
                sink.flush()
            if not chunk:
                return
    finally:
        os.close(fd)


async def _wait_for_exit(reply: socket.socket, process: ForkedProcess) -> None:
    while process.returncode is None:
        message = await _receive(reply)
        if message is None:
            # The zygote died: the exit status is lost; once the run is gone, a crash.
            while _alive(process.pid):
                await anyio.sleep(1)
            process.returncode = -9
        elif "exit" in message:
            process.returncode = int(message["exit"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RecentDeployments:
    """`read_deployment`, answered from the last `ttl` seconds' reads of the same deployment.

    Submitting one run reads its deployment three times within ~0.3 s (BaseWorker's check
    that it exists, the job configuration, `warm_plan`), serially, before the run can start.
    A deployment changed within `ttl` of a submission may reach it a moment late, as it could
    between those reads anyway. Each caller gets its own copy."""

    def __init__(
        self,
        read: Callable[[UUID | str], Awaitable[DeploymentResponse]],
        ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read, self.ttl, self._clock = read, ttl, clock
        self._recent: dict[UUID | str, tuple[float, DeploymentResponse]] = {}

    async def __call__(self, deployment_id: UUID | str) -> DeploymentResponse:
        now = self._clock()
        self._recent = {k: v for k, v in self._recent.items() if now - v[0] < self.ttl}
        if deployment_id not in self._recent:
            self._recent[deployment_id] = (now, await self._read(deployment_id))
        return self._recent[deployment_id][1].model_copy(deep=True)


class WarmProcessWorker(ProcessWorker):
    type = WORKER_TYPE
    _description = (
        "Process worker that forks each flow run from a pre-warmed parent with Prefect and the"
        " project's flows imported; serves `process` work pools."
    )
    _display_name = "Process (warm)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._zygote: Zygote | None = None
        self._poll_now = anyio.Event()

    def _record_work_pool_snapshot(self, work_pool: WorkPool) -> None:
        """BaseWorker's, without the type-mismatch warning for `process` pools: this worker
        serves them with ProcessWorker's job configuration."""
        work_pool = copy.deepcopy(work_pool)
        if not work_pool.base_job_template:
            work_pool.base_job_template = self.__class__.get_default_base_job_template()
        if work_pool.type not in (self.type, ProcessWorker.type):
            self._logger.warning(
                f"Worker type mismatch! This worker serves {self.type!r} and 'process' pools"
                f" but received {work_pool.type!r} from the server."
            )
        self._work_pool = work_pool

    async def setup(self) -> None:
        await super().setup()
        client = self.client
        client.read_deployment = RecentDeployments(client.read_deployment)  # type: ignore[method-assign]
        directory = project_dir()
        self._zygote = Zygote(directory, preloaded_entrypoints(directory))
        self._zygote.start()
        self._exit_stack.callback(self._zygote.stop)
        services = anyio.create_task_group()
        await self._exit_stack.enter_async_context(services)
        self._exit_stack.callback(services.cancel_scope.cancel)  # runs first: LIFO
        services.start_soon(self._watch_zygote)
        services.start_soon(self._subscribe_to_scheduled_runs)
        services.start_soon(self._poll_on_events)

    async def _watch_zygote(self) -> None:
        assert self._zygote is not None
        await self._zygote.wait_ready()
        if self._zygote.problem:
            self._logger.warning(
                "Warm start unavailable (%s); every flow run takes the stock process path.",
                self._zygote.problem,
            )
        else:
            self._logger.info("Warm start ready: %s", self._zygote.probe)

    async def _subscribe_to_scheduled_runs(self) -> None:
        """Wake the poller when Prefect announces a Scheduled run in this pool; the normal
        poll (PREFECT_WORKER_QUERY_SECONDS) is the fallback whenever this is down."""
        while self._work_pool is None:
            await anyio.sleep(0.2)
        pool_resource = f"prefect.work-pool.{self._work_pool.id}"
        event_filter = EventFilter(
            event=EventNameFilter(name=[SCHEDULED_EVENT]),
            related=EventRelatedFilter(id=[pool_resource]),
        )
        while True:
            try:
                async with get_events_subscriber(filter=event_filter) as subscriber:
                    async for _event in subscriber:
                        self._poll_now.set()
            except Exception as exc:
                self._logger.debug("Scheduled-run events unavailable: %s", exc)
            await anyio.sleep(5)

    async def _poll_on_events(self) -> None:
        schedule = PollSchedule()
        while True:
            event = self._poll_now
            wait = schedule.wait_seconds(time.monotonic())
            with anyio.move_on_after(wait if wait is not None else math.inf):
                await event.wait()
            if event.is_set():
                self._poll_now = anyio.Event()
                schedule.on_event(time.monotonic())
                continue
            if schedule.take_due(time.monotonic()):
                try:
                    await self.get_and_submit_flow_runs()
                except Exception:
                    self._logger.exception("Event-triggered poll failed")

    async def warm_plan(
        self, flow_run: FlowRun, configuration: ProcessJobConfiguration
    ) -> tuple[Path, str] | str:
        """(working directory, runtime entrypoint) for the warm path, or why not."""
        if self._zygote is None or not await self._zygote.ready():
            return f"no warm parent ({self._zygote.problem if self._zygote else 'not started'})"
        if configuration._command_configured:
            return "the job sets its own command"
        if flow_run.deployment_id is None:
            return "not a deployment's run"
        deployment = await self.client.read_deployment(flow_run.deployment_id)
        if deployment.entrypoint not in self._zygote.loaded():
            return f"entrypoint {deployment.entrypoint!r} is not preloaded"
        steps = deployment.pull_steps or []
        if len(steps) != 1 or list(steps[0]) != [SET_WORKING_DIRECTORY]:
            return "pull steps other than one set_working_directory"
        directory = str((steps[0][SET_WORKING_DIRECTORY] or {}).get("directory") or "")
        template = _ENV_TEMPLATE.match(directory)
        if template:
            directory = str({**os.environ, **configuration.env}.get(template.group(1)) or "")
        elif "{{" in directory:
            return f"pull step directory {directory!r} is a template we do not resolve"
        if not directory or Path(directory).resolve() != self._zygote.directory:
            return f"pull step directory {directory!r} is not the preloaded project"
        if not {**os.environ, **configuration.env}.get("PREFECT_API_URL"):
            return "PREFECT_API_URL is not set (never an ephemeral server)"
        return self._zygote.directory, _resolve_runtime_entrypoint(deployment.entrypoint)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        plan = await self.warm_plan(flow_run, configuration)
        if isinstance(plan, str):
            self._logger.info("Flow run %s takes the stock path: %s", flow_run.id, plan)
            return await super().run(flow_run, configuration, task_status)
        if task_status is None:
            task_status = anyio.TASK_STATUS_IGNORED
        assert self._zygote is not None
        directory, entrypoint = plan
        self._logger.debug("Flow run %s takes the warm path", flow_run.id)
        execution: FlowRunExecutionResult | None = None
        async with FlowRunExecutorContext() as ctx:
            runtime = Path(tempfile.mkdtemp(prefix="mailsync-warm-"))
            ctx.call_after_exit(lambda: shutil.rmtree(runtime, ignore_errors=True))
            starter = ZygoteStarter(
                zygote=self._zygote,
                env=configuration.env,
                cwd=directory,
                entrypoint=entrypoint,
                stream_output=configuration.stream_output,
                control_channel=ctx.control_channel,
                manifest_path=runtime / "workspace.json",
            )
            hooks = WorkspaceHookRunner(
                manifest_path=runtime / "workspace.json",
                stream_output=configuration.stream_output,
            )
            executor = ctx.create_executor(
                flow_run, starter, propose_submitting=False, hook_runner=hooks
            )

            async def execute(
                *, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                nonlocal execution
                execution = await executor.submit(task_status=task_status)

            async with anyio.create_task_group() as task_group:
                handle = await task_group.start(execute)
                if handle.pid is None:
                    raise RuntimeError("Flow run process has no PID")
                task_status.started(handle.pid)
        if execution is None or execution.status_code is None:
            raise RuntimeError("Failed to start flow run process.")
        return ProcessWorkerResult(
            status_code=execution.status_code, identifier=str(execution.handle.pid)
        )
