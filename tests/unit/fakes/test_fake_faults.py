"""The fakes' fault controls: held calls and delayed faults, so tests need no timing."""

from __future__ import annotations

import threading

from mailsync.fakes.control import FakeControl, FaultSpec
from mailsync.fakes.faults import FaultPlan, MailboxFaults


def _held_call(faults: MailboxFaults, address: str) -> threading.Thread:
    thread = threading.Thread(target=faults.draw(address).pause.wait, daemon=True)
    thread.start()
    return thread


def test_a_held_call_waits_until_the_plan_is_cleared() -> None:
    """A call drawn under `hold` is still waiting while the plan stands, and returns once
    it is cleared (or replaced); a mailbox without the hold never waits."""
    faults = MailboxFaults()
    faults.set("a@example.com", FaultPlan(hold=True))
    pause = faults.draw("A@example.com").pause
    assert pause.hold is not None and not pause.hold.is_set()  # waits for as long as it stands
    held = _held_call(faults, "A@example.com")
    assert not faults.draw("b@example.com").pause  # no plan, no pause
    assert faults.clear("a@example.com")
    assert pause.hold.is_set()
    held.join(5)  # a deadline: the call returns as soon as the plan is cleared
    assert not held.is_alive()

    faults.set("a@example.com", FaultPlan(hold=True))
    replaced = _held_call(faults, "a@example.com")
    faults.set("a@example.com", FaultPlan(slow_ms=0))
    replaced.join(5)
    assert not replaced.is_alive()
    assert not faults.draw("a@example.com").pause  # the new plan holds nothing


def test_clear_all_releases_every_held_call() -> None:
    """Clearing every plan (a fake's reset) lets every held call go."""
    faults = MailboxFaults()
    threads = []
    for n in range(3):
        faults.set(f"m{n}@example.com", FaultPlan(hold=True))
        threads.append(_held_call(faults, f"m{n}@example.com"))
    faults.clear_all()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()


def test_a_fault_can_let_the_first_calls_through() -> None:
    """`after: N` answers the next N calls of the operation normally, then `count` calls
    with the fault, then normally again; other operations are untouched."""
    control = FakeControl()
    control.add_fault(FaultSpec(operation="list", status=503, count=2, after=1))
    outcomes = [control.record("list") for _ in range(4)]
    assert [None if f is None else f.status for f in outcomes] == [None, 503, 503, None]
    assert control.record("get") is None
