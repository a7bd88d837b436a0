"""The pre-warmed parent warm flow runs are forked from: Prefect and our flows imported once.

Run as `python -m mailsync.orchestration.zygote FD PROJECT_DIR ENTRYPOINT...` by the warm worker
(never forked from the worker itself: its threads and event loop are what made forks deadlock
upstream, PrefectHQ/prefect#16802, #9229, #14901). Single-threaded: one selector over the worker's
channel and a SIGCHLD wakeup pipe. Each request forks a child that becomes `python -m
prefect.engine` in everything the engine can see (environment, argv, cwd, sys.path, settings,
stdio, its own session); the zygote reaps it and reports its exit status like a subprocess's.
Only the standard library is imported at module level, so the preload is what we measure.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A placeholder variable the worker puts last in the zygote's environment: a forked child writes
# its own environment over it, so /proc/<pid>/environ (what operators and
# tests/drills/test_drills.py grep for PREFECT__FLOW_RUN_ID) shows the run's variables, as it
# does for `python -m prefect.engine`. Only this variable's bytes are ever overwritten: nothing
# caches pointers to it.
ENV_RESERVE_VAR = "MAILSYNC_ZYGOTE_ENV_RESERVE"
ENV_RESERVE_BYTES = 64 * 1024
MAX_MESSAGE = 1 << 20


@dataclass
class Job:
    """One fork request, as seen in the child."""

    request: dict[str, Any]
    reply: socket.socket
    stdout_fd: int
    stderr_fd: int


def _open_sockets(exclude: set[int]) -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in exclude:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                count += 1
        except OSError:
            continue
    return count


# Modules imported lazily on a run's critical path (seen in a py-spy profile of warm children:
# ~40 ms a run): Prefect's first task call, SQLAlchemy's first SQLite engine, rich's first
# log line with markup; and the database drivers.
_FIRST_USED_IN_A_RUN = (
    "prefect.task_engine",
    "prefect.utilities.visualization",
    "sqlite3",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql",
    "psycopg",
    "rich._emoji_codes",
)


def preload(project_dir: Path, entrypoints: list[str], channel_fd: int) -> dict[str, Any]:
    """Import Prefect, the engine and each flow; report what a fork would inherit."""
    os.chdir(project_dir)
    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))
    import prefect  # noqa: F401
    import prefect._internal.control_listener as control_listener
    import prefect.engine  # noqa: F401
    import prefect.flow_engine  # noqa: F401
    from prefect.flows import load_flow_from_entrypoint

    loaded, failed = [], {}
    for entrypoint in entrypoints:
        # A failed import is reported, not ignored (the stdlib forkserver drops it silently):
        # the worker sends that entrypoint's runs down the stock path.
        try:
            load_flow_from_entrypoint(str(project_dir / entrypoint))
            loaded.append(entrypoint)
        except Exception as exc:
            failed[entrypoint] = f"{type(exc).__name__}: {exc}"
    # What every sync run loads next (provider client libraries, the database drivers): in
    # the parent, once, instead of in each child.
    from mailsync.providers import registry

    registry.preload()
    for module in _FIRST_USED_IN_A_RUN:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    return {
        "pid": os.getpid(),
        "prefect_version": prefect.__version__,
        "threads": len(os.listdir("/proc/self/task")),
        "sockets": _open_sockets({channel_fd}),
        # The engine's control listener reads PREFECT__CONTROL_* once; it must not have yet.
        "control_configured": bool(control_listener._configured),
        "loaded": loaded,
        "failed": failed,
        "project_dir": str(project_dir),
    }


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the worker went away: nothing to tell
        sock.send(json.dumps(message).encode())


def serve(channel: socket.socket) -> Job | None:
    """Fork a child per request until the worker closes the channel. Returns only in a child."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd is written
    replies: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(channel, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is channel:
                try:
                    data, fds, _, _ = socket.recv_fds(channel, MAX_MESSAGE, 3)
                except InterruptedError:
                    continue
                if not data:
                    return None  # the worker is gone; running children keep their sessions
                reply = socket.socket(fileno=fds[0])
                try:
                    pid = os.fork()
                except OSError as exc:
                    _send(reply, {"error": f"fork failed: {exc}"})
                    reply.close()
                    for fd in fds[1:]:
                        os.close(fd)
                    continue
                if pid == 0:
                    selector.close()
                    channel.close()
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.close(wake_r)
                    os.close(wake_w)
                    for other in replies.values():
                        other.close()
                    return Job(json.loads(data), reply, fds[1], fds[2])
                for fd in fds[1:]:
                    os.close(fd)
                replies[pid] = reply
            else:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                _reap(replies)


def _reap(replies: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = replies.pop(pid, None)
        if reply is not None:
            # waitstatus_to_exitcode gives -N for a signal, as subprocess's returncode does.
            _send(reply, {"pid": pid, "exit": os.waitstatus_to_exitcode(status)})
            reply.close()


def _show_environment(environment: dict[str, str]) -> None:
    """Write the child's environment over the reserve variable's bytes in the environment
    block the kernel shows as /proc/self/environ (fields 50-51 of /proc/self/stat)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    env_start, env_end = int(fields[47]), int(fields[48])
    block = ctypes.string_at(env_start, env_end - env_start)
    marker = f"{ENV_RESERVE_VAR}=".encode()
    offset = 0 if block.startswith(marker) else block.find(b"\0" + marker) + 1
    if offset == 0 and not block.startswith(marker):
        return
    size = block.find(b"\0", offset) - offset
    first = "PREFECT__FLOW_RUN_ID"
    entries = sorted(environment.items(), key=lambda item: item[0] != first)
    out = bytearray()
    for key, value in entries:
        entry = f"{key}={value}".encode(errors="surrogateescape") + b"\0"
        if len(out) + len(entry) > size:
            continue
        out += entry
    out += b"\0" * (size - len(out))
    ctypes.memmove(env_start + offset, bytes(out), size)


def become_engine(job: Job) -> None:
    """In a forked child: become `python -m prefect.engine` for the requested flow run."""
    os.setsid()  # the stock worker starts each run in its own session too
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(job.stdout_fd, 1)
    os.dup2(job.stderr_fd, 2)
    for fd in (devnull, job.stdout_fd, job.stderr_fd):
        if fd > 2:
            os.close(fd)
    # Sent only now, after setsid: the worker may signal the group as soon as it has the pid.
    _send(job.reply, {"pid": os.getpid()})
    job.reply.close()

    request = job.request
    environment: dict[str, str] = request["env"]
    if not environment.get("PREFECT_API_URL"):
        # Never an ephemeral Prefect server inside a flow run.
        print("warm worker: PREFECT_API_URL is not set; refusing to run", file=sys.stderr)
        os._exit(1)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(environment)
    _show_environment(environment)
    # `python -m` puts the working directory first on sys.path; PYTHONPATH after it.
    for entry in reversed([request["cwd"], *environment.get("PYTHONPATH", "").split(os.pathsep)]):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    if sys.path[0] != request["cwd"]:
        sys.path.insert(0, request["cwd"])

    import runpy

    import prefect.engine
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    # Settings were read at import from the zygote's environment; read them again from the
    # run's (e.g. PREFECT_FLOWS_HEARTBEAT_FREQUENCY from the job variables). Our own settings
    # too: a flow module that asked for them at import cached the zygote's.
    refresh_global_settings_context()
    setup_logging()
    from mailsync.settings import get_settings

    get_settings.cache_clear()
    sys.argv = [str(prefect.engine.__file__)]
    # As `python -m prefect.engine`: its exit() and exceptions end this process the normal
    # way (threads joined, atexit handlers run: Prefect's logs and events are flushed).
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


def main() -> None:
    channel = socket.socket(fileno=int(sys.argv[1]))
    project_dir = Path(sys.argv[2]).resolve()
    os.environ.pop(ENV_RESERVE_VAR, None)  # from os.environ only; its bytes stay for children
    try:
        probe = preload(project_dir, sys.argv[3:], channel.fileno())
    except BaseException as exc:
        _send(channel, {"ready": False, "reason": f"preload failed: {type(exc).__name__}: {exc}"})
        raise
    unsafe = probe["threads"] != 1 or probe["sockets"] or probe["control_configured"]
    _send(channel, {"ready": not unsafe, "probe": probe})
    if unsafe:
        return
    # Children share the parent's pages until they write them; the collector would write
    # (and so copy) every tracked object it walks. Frozen, the preloaded ones are left alone.
    gc.freeze()
    job = serve(channel)
    if job is not None:
        become_engine(job)


if __name__ == "__main__":
    main()
