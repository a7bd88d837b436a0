"""The parent's end of zygote.py: a run started in a child forked from the warm zygote.

The worker (warm_worker.py) hands a flow run it can vouch for to `ZygoteStarter`, which asks
the zygote to fork, streams the child's output and waits for its exit as the stock process
worker does for the processes it starts.
"""

from __future__ import annotations

import codecs
import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect.runner._control_channel import ControlChannel
from prefect.runner._process_manager import ProcessHandle, create_isolated_termination_scope
from prefect.runner._workspace_runtime import PreparedWorkspaceManifest, write_private_model
from prefect.runner._workspace_supervisor import _hook_command
from prefect.settings import get_current_settings
from prefect.utilities.processutils import get_sys_executable, sanitize_subprocess_env

from mailsync.orchestration import zygote as zygote_mod

ZYGOTE_READY_SECONDS = 120


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
