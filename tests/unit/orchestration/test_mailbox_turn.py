"""MailboxTurn: waiting for, renewing and giving back a mailbox's one slot, on a fake slot store."""

from __future__ import annotations

import threading

import pytest

from mailsync.core.rules.slots import LimitSpec, Refusal
from mailsync.errors import MailboxBusyError, PrefectUnavailableError
from mailsync.orchestration.leases import MailboxTurn

SPEC = LimitSpec("mailsync-mailbox:mbx_1", 1)


class Slots:
    """PrefectLimits' take / renew / release over one in-memory limit."""

    def __init__(self, retry_after: float | None = 0.5) -> None:
        self.holder: str | None = None
        self.retry_after = retry_after
        self.takes: list[bool] = []  # ensure_first of each take
        self.renewed = threading.Event()
        self.renew_answer = True
        self.released: list[str] = []
        self.unreachable = False
        self._n = 0

    def take(self, specs: list[LimitSpec], lease_seconds: float, *, ensure_first: bool = True):
        if self.unreachable:
            raise PrefectUnavailableError("the Prefect API could not be reached")
        self.takes.append(ensure_first)
        if self.holder is not None:
            return Refusal(self.retry_after)
        self._n += 1
        self.holder = f"lease-{self._n}"
        return self.holder

    def renew(self, lease_id: str, lease_seconds: float) -> bool:
        self.renewed.set()
        if self.unreachable:
            raise PrefectUnavailableError("the Prefect API could not be reached")
        return self.renew_answer and lease_id == self.holder

    def release(self, lease_id: str) -> None:
        self.released.append(lease_id)
        if lease_id == self.holder:
            self.holder = None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _turn(slots: Slots, clock: Clock, wait: float = 3.0, lease: float = 60.0) -> MailboxTurn:
    return MailboxTurn(slots, SPEC, wait, lease, sleep=clock.sleep, clock=clock)  # type: ignore[arg-type]


def test_a_free_slot_is_taken_at_once_without_an_upsert_and_given_back() -> None:
    """A turn asks for the slot first (no create-or-update call before it) and releases its
    own lease on exit."""
    slots, clock = Slots(), Clock()
    with _turn(slots, clock) as turn:
        assert slots.holder == turn.lease_id == "lease-1"
    assert slots.takes == [False] and clock.sleeps == []
    assert slots.released == ["lease-1"] and slots.holder is None


def test_a_busy_slot_is_waited_for_at_prefects_pace_then_refused_at_the_deadline() -> None:
    """While another sync holds the slot the turn asks again after Prefect's Retry-After (at
    most 1 s), and gives up with MailboxBusyError once it has waited `wait_seconds`."""
    slots, clock = Slots(retry_after=0.5), Clock()
    slots.holder = "someone-else"
    with pytest.raises(MailboxBusyError, match="did not start"), _turn(slots, clock, wait=2.0):
        pass
    assert clock.sleeps == [0.5, 0.5, 0.5, 0.5] and clock.now == 2.0
    assert slots.released == []  # never held, never released


def test_a_long_retry_after_is_capped_and_the_last_wait_ends_at_the_deadline() -> None:
    """Prefect's Retry-After for a long holder (minutes) does not make a turn sleep past its
    own deadline, nor more than a second between asks."""
    slots, clock = Slots(retry_after=300.0), Clock()
    slots.holder = "someone-else"
    with pytest.raises(MailboxBusyError), _turn(slots, clock, wait=2.5):
        pass
    assert clock.sleeps == [1.0, 1.0, 0.5]


def test_the_turn_starts_when_the_holder_gives_the_slot_back() -> None:
    """A waiting turn gets the slot on its first ask after the other holder released it."""
    slots, clock = Slots(retry_after=0.2), Clock()
    slots.holder = "someone-else"

    def sleep(seconds: float) -> None:
        Clock.sleep(clock, seconds)
        if clock.now >= 0.6:
            slots.holder = None

    turn = MailboxTurn(slots, SPEC, 5.0, 60.0, sleep=sleep, clock=clock)  # type: ignore[arg-type]
    with turn:
        assert turn.lease_id == "lease-1"
    assert len(slots.takes) == 4


def test_the_lease_is_renewed_while_held_and_a_lapse_is_recorded() -> None:
    """A thread renews the lease every third of its duration; a renewal Prefect answers with
    "gone" marks the turn lapsed (the sync's writes are no longer fenced by it)."""
    slots, clock = Slots(), Clock()
    slots.renew_answer = False
    with _turn(slots, clock, lease=0.03) as turn:
        assert slots.renewed.wait(5)
        deadline = threading.Event()
        for _ in range(500):
            if turn.lapsed:
                break
            deadline.wait(0.01)
        assert turn.lapsed


def test_prefect_unreachable_is_raised_as_limits_unavailable() -> None:
    """A turn that cannot ask Prefect raises PrefectUnavailableError (runtime turns it into the
    retryable PrefectUnavailableError), not MailboxBusyError."""
    slots, clock = Slots(), Clock()
    slots.unreachable = True
    with pytest.raises(PrefectUnavailableError), _turn(slots, clock):
        pass


def test_a_turn_prefect_could_not_renew_for_a_whole_lease_is_lapsed() -> None:
    """Prefect unreachable: a failed renewal alone does not lapse the turn (the next one may
    get through), but once no renewal was confirmed for a whole lease time the lease may have
    expired on the server and another sync may hold the turn: the turn reads lapsed, so the
    sync's fence stops its writes (issue 15 point 5: leases are fences)."""
    slots, clock = Slots(), Clock()
    with _turn(slots, clock, lease=60.0) as turn:
        turn._renewal.stop()  # type: ignore[union-attr]  # renewals driven by hand below
        slots.unreachable = True
        clock.now += 20
        turn._renew_once()  # unreachable: logged, not lapsed yet
        assert not turn.lapsed
        clock.now += 39.9
        assert not turn.lapsed
        clock.now += 0.2  # 60.1 s since the take, the last confirmation
        assert turn.lapsed


def test_a_confirmed_renewal_restarts_the_lease_time() -> None:
    """The lease time counts from the last renewal Prefect confirmed (from when it was sent)."""
    slots, clock = Slots(), Clock()
    with _turn(slots, clock, lease=60.0) as turn:
        turn._renewal.stop()  # type: ignore[union-attr]
        clock.now += 50
        turn._renew_once()
        clock.now += 50  # 100 s since the take, 50 s since the renewal
        assert not turn.lapsed


class Book:
    """RunLeases in memory: the turns a run has recorded (a failing one, if told to)."""

    def __init__(self, fail: bool = False) -> None:
        self.held: set[str] = set()
        self.fail = fail

    def record(self, lease_id: str) -> None:
        if self.fail:
            raise OSError("database unavailable")
        self.held.add(lease_id)

    def forget(self, lease_id: str) -> None:
        self.held.discard(lease_id)


def test_a_taken_turn_is_recorded_for_the_crash_hook_while_held() -> None:
    """With a run's book, the turn is recorded once taken and forgotten once given back (the
    crash hook releases what is still recorded when the run dies)."""
    slots, clock, book = Slots(), Clock(), Book()
    turn = MailboxTurn(slots, SPEC, 5.0, 60.0, sleep=clock.sleep, clock=clock, book=book)  # type: ignore[arg-type]
    with turn:
        assert book.held == {"lease-1"}
    assert book.held == set() and slots.released == ["lease-1"]


def test_a_turn_that_cannot_be_recorded_is_given_back_at_once() -> None:
    """An unrecorded turn would outlive a crash of its run: when the record fails, the lease
    is released and the sync does not start."""
    slots, clock = Slots(), Clock()
    turn = MailboxTurn(slots, SPEC, 5.0, 60.0, sleep=clock.sleep, clock=clock, book=Book(fail=True))  # type: ignore[arg-type]
    with pytest.raises(OSError), turn:
        pytest.fail("the sync started without its turn recorded")
    assert slots.released == ["lease-1"] and slots.holder is None and turn.lease_id is None
