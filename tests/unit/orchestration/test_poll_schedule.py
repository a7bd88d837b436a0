"""PollSchedule: when the warm worker polls after Scheduled events."""

from __future__ import annotations

import pytest

from mailsync.orchestration.poll_schedule import PollSchedule


def _polls(schedule: PollSchedule, until: float, step: float = 0.01) -> list[float]:
    times = []
    for i in range(round(until / step) + 1):
        now = round(i * step, 6)
        if schedule.take_due(now):
            times.append(round(now, 2))
    return times


def test_an_event_gives_one_poll_per_offset_then_none() -> None:
    """After one event: one poll at each offset after it, then nothing until the next."""
    schedule = PollSchedule((0.05, 0.2, 0.6))
    assert schedule.wait_seconds(0.0) is None
    schedule.on_event(0.0)
    assert schedule.wait_seconds(0.0) == 0.05
    assert _polls(schedule, 5.0) == [0.05, 0.2, 0.6]
    assert schedule.wait_seconds(5.0) is None


def test_a_new_event_never_waits_behind_the_old_tail() -> None:
    """An event during the long last wait of an earlier series is polled for at its own first
    offset (the bug: the worker slept out the old series' 2 s before looking at it); the old
    series' last poll still happens."""
    schedule = PollSchedule((0.05, 0.2, 2.0))
    schedule.on_event(0.0)
    assert schedule.take_due(0.05) and schedule.take_due(0.2)
    schedule.on_event(0.5)  # the old series still had a poll due at 2.0
    assert schedule.wait_seconds(0.5) == pytest.approx(0.05)
    assert not schedule.take_due(0.54)
    assert _polls(schedule, 5.0) == [0.55, 0.7, 2.0, 2.5]


def test_a_steady_burst_of_events_still_polls_soon() -> None:
    """Events every 20 ms for a second: the first poll is still 50 ms after the first event,
    and polls stay about one per 50 ms, not one per event."""
    schedule = PollSchedule((0.05, 0.2))
    polls, now = [], 0.0
    for step in range(300):
        now = step * 0.01
        if step % 2 == 0 and now < 1.0:
            schedule.on_event(now)
        if schedule.take_due(now):
            polls.append(round(now, 2))
    assert polls[0] == 0.05
    assert 15 <= len(polls) <= 30, polls


def test_overdue_polls_collapse_into_one() -> None:
    """A poll that ran long does not leave a burst of back-to-back polls behind it."""
    schedule = PollSchedule((0.05, 0.2, 0.6))
    schedule.on_event(0.0)
    assert schedule.take_due(1.0)  # all three were due
    assert not schedule.take_due(1.0)
    assert schedule.wait_seconds(1.0) is None
