"""Stopping a `mailsync up` under test, and saying where it hung when it does not stop."""

from __future__ import annotations

import signal
import subprocess
import threading
import time


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
