"""Stopping a `mailsync up` under test (saying where it hung when it does not stop), and
finding every process a stack started."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from pathlib import Path


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
