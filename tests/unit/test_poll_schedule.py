"""PollSchedule: when the warm worker polls after Scheduled events."""

from __future__ import annotations

import pytest

from mailsync.orchestration.poll_schedule import PollSchedule


def _polls(schedule: PollSchedule, until: float, step: float = 0.01) -> list[float]:
    times, now = [], 0.0
    while now <= until:
        if schedule.take_due(now):
            times.append(round(now, 2))
        now += step
    return times


def test_an_event_gives_one_poll_per_offset_then_none() -> None:
    """After one event: one poll at each offset after it, then nothing until the next."""
    schedule = PollSchedule((0.05, 0.2, 0.6))
    assert schedule.wait_seconds(0.0) is None
    schedule.on_event(0.0)
    assert schedule.wait_seconds(0.0) == 0.05
    assert _polls(schedule, 5.0) == [0.05, 0.2, 0.6]
    assert schedule.wait_seconds(5.0) is None


def test_a_new_event_restarts_the_series_and_never_waits_behind_the_old_tail() -> None:
    """An event during the long last wait of an earlier series is polled for at its own first
    offset (the bug: the worker slept out the old series' 2 s before looking at it)."""
    schedule = PollSchedule((0.05, 0.2, 2.0))
    schedule.on_event(0.0)
    assert schedule.take_due(0.05) and schedule.take_due(0.2)
    schedule.on_event(0.5)  # the old series still had a poll due at 2.0
    assert schedule.wait_seconds(0.5) == pytest.approx(0.05)
    assert not schedule.take_due(0.54)
    assert schedule.take_due(0.55)


def test_overdue_polls_collapse_into_one() -> None:
    """A poll that ran long does not leave a burst of back-to-back polls behind it."""
    schedule = PollSchedule((0.05, 0.2, 0.6))
    schedule.on_event(0.0)
    assert schedule.take_due(1.0)  # all three were due
    assert not schedule.take_due(1.0)
    assert schedule.wait_seconds(1.0) is None
