"""The Prefect-call budget: the Prefect client's own retries stop once a call has run out of
time, with an error the client does not retry; a call answered in time is untouched."""

from __future__ import annotations

import httpx
import pytest
from prefect.client.base import PrefectHttpxSyncClient

from mailsync.orchestration.deadline import DeadlineTransport, PrefectCallTimeout


class StepClock:
    """Each reading is `step` seconds after the previous one."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def prefect_client(answers: list[int], budget: float) -> tuple[PrefectHttpxSyncClient, list[int]]:
    """Prefect's own HTTP client (with its retry loop) over a server answering `answers` in
    turn (503s carry Retry-After: 0, so the client retries without sleeping)."""
    seen: list[int] = []

    def server(request: httpx.Request) -> httpx.Response:
        status = answers[min(len(seen), len(answers) - 1)]
        seen.append(status)
        return httpx.Response(status, headers={"Retry-After": "0"}, json={})

    transport = DeadlineTransport(httpx.MockTransport(server), budget, clock=StepClock(1.0))
    return PrefectHttpxSyncClient(transport=transport, base_url="http://prefect/api"), seen


def test_retries_stop_at_the_budget() -> None:
    """A server answering 503 forever: Prefect's client would try 6 times; with a 2.5 s
    budget (one second between attempts) it tries 3 and raises PrefectCallTimeout."""
    client, seen = prefect_client([503], budget=2.5)
    with pytest.raises(PrefectCallTimeout, match="within 2.5 s"):
        client.get("/flow_runs/1")
    assert seen == [503, 503, 503]


def test_a_call_answered_within_the_budget_is_untouched() -> None:
    """One 503 then 200 inside the budget: the retry happens and the answer comes back."""
    client, seen = prefect_client([503, 200], budget=5)
    assert client.get("/flow_runs/1").status_code == 200
    assert seen == [503, 200]


def test_each_call_has_its_own_budget() -> None:
    """The budget runs per request, not per client: a later call starts afresh."""
    client, _ = prefect_client([200], budget=1.5)
    for _ in range(5):
        assert client.get("/health").status_code == 200
