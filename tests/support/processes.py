"""The processes of a stack under test: reading a `mailsync up`'s output, stopping it (saying
where it hung when it does not stop), finding the processes that run a flow run and every
process a stack started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """What the process printed up to the first line holding `marker`; fail after `timeout`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            seen.append(line)
            if marker in line:
                return "".join(seen)
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.1)
    raise AssertionError(f"{marker!r} not seen; output so far:\n{''.join(seen)}")


def stop_up(process: subprocess.Popen[str], timeout: float = 90) -> int:
    """Ctrl-C a `mailsync up` (stdout piped, text) and wait for it to exit.

    When it does not exit in time it is asked for its threads' stacks (`mailsync up` dumps
    them on SIGUSR1), killed, and the failure carries the end of what it printed."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    tail: list[str] = []
    if process.stdout is not None:
        stdout = process.stdout
        reader = threading.Thread(target=lambda: tail.extend(stdout), daemon=True)
        reader.start()
    process.send_signal(signal.SIGUSR1)
    time.sleep(2)  # the dump is written at once; this only lets the reader catch it
    process.kill()
    process.wait()
    raise AssertionError(
        f"`mailsync up` did not stop within {timeout} s of Ctrl-C; its last output:\n"
        + "".join(tail)[-6000:]
    )


def flow_run_pids(flow_run_id: str) -> list[int]:
    """Processes executing a flow run: the process worker sets PREFECT__FLOW_RUN_ID on them."""
    wanted = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def children_of(pid: int) -> set[int]:
    return {
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _parent_or_none(int(entry.name)) == pid
    }


def _parent_or_none(pid: int) -> int | None:
    try:
        return parent_pid(pid)
    except OSError:
        return None  # gone meanwhile


def descendants(*roots: int) -> list[int]:
    """`roots` and every process below them: a stack's children and what they started
    (workers' zygotes, flow runs, the servers' own subprocesses)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.name.isdigit():
                # The command may hold spaces and parentheses: the ppid follows the last ")".
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
    found = list(roots)
    for pid in found:
        found += [p for p, ppid in parents.items() if ppid == pid and p not in found]
    return found
