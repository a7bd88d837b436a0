"""A refresh round's turns: one lease per job over its mailboxes, all or none, given back."""

from __future__ import annotations

import pytest

from mailsync.core.rules.admission import mailbox_limit
from mailsync.core.rules.slots import LimitSpec, Refusal
from mailsync.errors import PrefectUnavailableError
from mailsync.orchestration.leases import MailboxTurns
from mailsync.orchestration.runtime import RoundTurns, held_fence


class Limits:
    """PrefectLimits' take / renew / release over in-memory limits of one slot each; a take
    of several limits is all or none, as Prefect's increment-with-lease is."""

    def __init__(self) -> None:
        self.holders: dict[str, str] = {}  # limit name -> lease
        self.leases: dict[str, list[str]] = {}  # lease -> limit names
        self.calls: list[str] = []
        self.unreachable = False
        self._n = 0

    def take(self, specs: list[LimitSpec], lease_seconds: float, *, ensure_first: bool = True):
        self.calls.append("take")
        if self.unreachable:
            raise PrefectUnavailableError("the Prefect API could not be reached")
        names = [s.name for s in specs]
        if any(n in self.holders for n in names):
            return Refusal(1.0)
        self._n += 1
        lease = f"lease-{self._n}"
        self.leases[lease] = names
        self.holders.update(dict.fromkeys(names, lease))
        return lease

    def renew(self, lease_id: str, lease_seconds: float) -> bool:
        return lease_id in self.leases

    def release(self, lease_id: str) -> None:
        self.calls.append("release")
        for name in self.leases.pop(lease_id, []):
            self.holders.pop(name, None)


def _names(*mailboxes: str) -> list[str]:
    return [mailbox_limit(m).name for m in mailboxes]


def test_a_job_takes_its_mailboxes_turns_in_one_call_and_gives_them_back_in_one() -> None:
    """Holding the turns of a job of three mailboxes is one take, and its release one call;
    while held, every one of the three mailboxes' slots is taken."""
    limits = Limits()
    turns = RoundTurns(limits, 60)  # type: ignore[arg-type]
    assert turns.hold("job-1", ["a", "b", "c"])
    assert set(limits.holders) == set(_names("a", "b", "c"))
    turns.release("job-1")
    assert limits.holders == {} and limits.calls == ["take", "release"]


def test_one_busy_mailbox_means_no_turn_is_held_for_the_job() -> None:
    """When another sync holds one mailbox's turn, the job holds none (each of its mailboxes
    then waits for its own turn): never a second sync of the busy one, nor a partial lease."""
    limits = Limits()
    limits.holders[mailbox_limit("b").name] = "someone-else"
    turns = RoundTurns(limits, 60)  # type: ignore[arg-type]
    assert not turns.hold("job-1", ["a", "b", "c"])
    assert limits.holders == {mailbox_limit("b").name: "someone-else"}
    turns.release("job-1")  # nothing held: nothing given back
    assert limits.calls == ["take"]


def test_prefect_unreachable_holds_nothing_and_does_not_raise() -> None:
    """A round whose Prefect cannot be asked goes on: its syncs take their own turns, which
    retry (tasks/refresh.py)."""
    limits = Limits()
    limits.unreachable = True
    assert not RoundTurns(limits, 60).hold("job-1", ["a"])  # type: ignore[arg-type]


def test_release_all_gives_back_every_job_still_held() -> None:
    """At the end of a round (or when it fails) nothing stays held until its lease expires."""
    limits = Limits()
    turns = RoundTurns(limits, 60)  # type: ignore[arg-type]
    assert turns.hold("job-1", ["a"]) and turns.hold("job-2", ["b", "c"])
    turns.release("job-1")
    turns.release_all()
    assert limits.holders == {} and limits.calls == ["take", "take", "release", "release"]


def test_a_job_with_no_quick_mailbox_asks_nothing() -> None:
    """Mailboxes never synced take their own turn; a job of only those makes no call."""
    limits = Limits()
    assert not RoundTurns(limits, 60).hold("job-1", [])  # type: ignore[arg-type]
    assert limits.calls == []


@pytest.mark.parametrize("answer", [True, False])
def test_the_shared_lease_is_renewed_and_a_lapse_recorded(answer: bool) -> None:
    """The one lease of a job's turns is renewed while held; one Prefect no longer knows
    marks the turns lapsed."""
    limits = Limits()
    turns = MailboxTurns(limits, [mailbox_limit("a")], 60)  # type: ignore[arg-type]
    with turns:
        assert turns.held and turns.lease_id is not None
        if not answer:
            limits.leases.pop(turns.lease_id)
        turns._renew_once()
        assert turns.lapsed is not answer


def test_a_batch_syncs_behind_the_fence_of_the_turns_its_round_holds() -> None:
    """A batch whose turns its round holds syncs with a fence on that lease (issue 15 point 5:
    before, `turn_held` syncs passed no fence at all and wrote on after the lease lapsed): the
    fence is open while the round's lease is renewed and closed once it lapsed; a key the
    round does not hold (or no longer holds) gives no fence, and the sync takes its own turn."""
    limits = Limits()
    turns = RoundTurns(limits, 60)  # type: ignore[arg-type]
    assert turns.hold("job-1/0", ["a", "b"])
    fence = held_fence("job-1/0")
    assert fence is not None and fence()
    held = turns._held["job-1/0"]
    limits.leases.pop(held.lease_id or "")
    held._renew_once()
    assert not fence()
    assert held_fence("job-2/0") is None
    turns.release("job-1/0")
    assert held_fence("job-1/0") is None
