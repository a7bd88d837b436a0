"""A flow the warm-worker tests run: it reports what its process saw, logs, and retries a task."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.context import get_run_context
from prefect.settings import get_current_settings

from mailsync.settings import get_settings

# As flows/refresh.py does: read mailsync's settings at import, which in the warm parent
# caches them from the parent's environment; a run must see its job's settings all the same.
IMPORTED_WITH = get_settings().refresh_concurrency


@task(retries=1, retry_delay_seconds=0)
def flaky() -> int:
    context = get_run_context()
    run_count = context.task_run.run_count  # type: ignore[union-attr]
    if run_count < 2:
        raise RuntimeError("first attempt fails on purpose")
    return run_count


@flow(name="warm-probe")
def probe(report: str, sleep: float = 0.0) -> int:
    get_run_logger().info("probe says hello")
    print("probe prints to stdout")
    attempts = flaky()
    Path(report).write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "cwd": os.getcwd(),
                "argv": sys.argv,
                "env": {k: v for k, v in os.environ.items() if k.startswith(("PREFECT", "MAIL"))},
                "heartbeat": get_current_settings().flows.heartbeat_frequency,
                "refresh_concurrency": get_settings().refresh_concurrency,
                "api_url": get_current_settings().api.url,
                "threads": threading.active_count(),
            }
        )
    )
    time.sleep(sleep)
    return attempts


@flow(name="warm-probe-other")
def other_probe(report: str, sleep: float = 0.0) -> int:
    return probe.fn(report, sleep)
