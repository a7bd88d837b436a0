"""When the warm worker polls after Prefect announces a Scheduled run: a few times, soon."""

from __future__ import annotations

from collections.abc import Sequence

# Prefect's server emits `prefect.flow-run.Scheduled` before the transaction creating the run
# commits (a subscriber often has the event before the creating POST has its answer), so a
# poll at once can miss the run: poll shortly after, and a few more times for a loaded server.
# Seconds after the event.
AFTER_EVENT = (0.05, 0.2, 0.6, 2.0)
# Polls due closer together than this are one poll (a burst of events, one poll per moment).
MERGE_SECONDS = 0.05


class PollSchedule:
    """The polls due after Scheduled events. Each event adds its own series: a run created
    during an earlier series' last wait is polled for at its own first offset (before, it
    waited out the old series' 2 s), and a steady burst of events does not keep pushing the
    next poll back."""

    def __init__(self, offsets: Sequence[float] = AFTER_EVENT) -> None:
        self.offsets = tuple(offsets)
        self._due: list[float] = []

    def on_event(self, now: float) -> None:
        for due in (now + offset for offset in self.offsets):
            if all(abs(due - other) >= MERGE_SECONDS for other in self._due):
                self._due.append(due)
        self._due.sort()

    def wait_seconds(self, now: float) -> float | None:
        """How long until the next poll is due; None when none is (wait for an event)."""
        return max(0.0, self._due[0] - now) if self._due else None

    def take_due(self, now: float) -> bool:
        """Whether a poll is due now; consumes every due time (one poll covers them)."""
        due = [t for t in self._due if t <= now]
        self._due = [t for t in self._due if t > now]
        return bool(due)
