"""Waiting on state instead of sleeping: the suite's one polling helper, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(
    probe: Callable[[], T],
    what: str,
    timeout: float = 60,
    every: float = 0.2,
    *,
    until: Callable[[T], Any] = bool,
) -> T:
    """Call `probe` every `every` seconds until `until` holds for what it returns (by default:
    it is truthy) and return that; fail after `timeout` seconds, showing the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s; last seen: {value!r:.800}")
        time.sleep(every)


def job_ended(view: dict[str, Any]) -> bool:
    """A job's public view (GET /v1/email/sync/{id}) in a terminal status."""
    return view["status"] in ("completed", "failed")
