"""Guards RetryPolicy, the providers' one retry policy, and the Retrying it runs; no real sleeps."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import httplib2
import pytest
from googleapiclient.errors import HttpError

from mailsync.providers.base import AuthError, ProviderError, TransientProviderError
from mailsync.providers.gmail import RETRY as GMAIL_RETRY
from mailsync.providers.microsoft import THROTTLED, TRANSIENT
from mailsync.providers.microsoft.errors import _Retryable, _Throttled
from mailsync.providers.retry import RetryPolicy, retrying

POLICY = RetryPolicy(attempts=4, backoff=0.25, max_retry_after=10.0)


class Script:
    """A call that raises the given failures in turn, then returns "done"."""

    def __init__(self, failures: Iterable[BaseException]) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def transient(retry_after: float | None = None) -> TransientProviderError:
    return TransientProviderError("503", retry_after=retry_after)


def gmail_refusal(retry_after: float | None = None) -> TransientProviderError:
    """A 503 as the Gmail provider raises it: translated from the client's HttpError."""
    error = TransientProviderError("gmail messages.list: HTTP 503", retry_after=retry_after)
    error.__cause__ = HttpError(httplib2.Response({"status": 503}), b"")
    return error


def run(
    *policies: RetryPolicy,
    failures: Iterable[BaseException],
    uniform: Callable[[float, float], float] | None = None,
) -> tuple[Any, list[float], Script]:
    """(result or raised exception, the sleeps asked for, the script)."""
    sleeps: list[float] = []
    script = Script(failures)
    extra = {"uniform": uniform} if uniform else {}
    try:
        result: Any = retrying(*policies, sleep=sleeps.append, **extra)(script)
    except BaseException as exc:
        result = exc
    return result, sleeps, script


def test_backoff_doubles_between_attempts() -> None:
    """Without Retry-After the waits are the backoff, doubling: backoff * 2 ** (n - 1) after
    the n-th failure, and the call's result comes back once it succeeds."""
    result, sleeps, script = run(POLICY, failures=[transient(), transient(), transient()])
    assert result == "done"
    assert sleeps == [0.25, 0.5, 1.0]
    assert script.calls == 4


def test_retry_after_is_honoured_over_a_shorter_backoff() -> None:
    """A Retry-After longer than the backoff is what is waited; a shorter one never shortens
    the backoff."""
    result, sleeps, _ = run(POLICY, failures=[transient(3.0), transient(0.1)])
    assert result == "done"
    assert sleeps == [3.0, 0.5]


def test_a_retry_after_beyond_the_cap_raises_at_once_carrying_it() -> None:
    """A failure asking for more than max_retry_after is not slept through: the very failure
    is raised after one attempt, with its retry_after intact for the caller to schedule."""
    refusal = transient(120.0)
    result, sleeps, script = run(POLICY, failures=[refusal])
    assert result is refusal
    assert result.retry_after == 120.0
    assert sleeps == []
    assert script.calls == 1


def test_the_cap_is_on_retry_after_not_on_the_backoff() -> None:
    """The cap bounds what the server asks for; the policy's own backoff is bounded by the
    attempts alone (a backoff past the cap is still waited)."""
    policy = RetryPolicy(attempts=3, backoff=4.0, max_retry_after=5.0)
    result, sleeps, _ = run(policy, failures=[transient(), transient()])
    assert result == "done"
    assert sleeps == [4.0, 8.0]


def test_attempts_are_bounded_and_the_last_failure_is_raised() -> None:
    """A failure that persists is tried exactly `attempts` times, sleeping in between only,
    and the last failure itself is raised (not tenacity's RetryError)."""
    failures = [transient() for _ in range(10)]
    last = failures[POLICY.attempts - 1]
    result, sleeps, script = run(POLICY, failures=failures)
    assert result is last
    assert script.calls == POLICY.attempts
    assert len(sleeps) == POLICY.attempts - 1


@pytest.mark.parametrize(
    "failure",
    [AuthError("401"), ProviderError("400"), ValueError("bug"), KeyboardInterrupt()],
    ids=["auth", "provider", "bug", "interrupt"],
)
def test_non_transient_errors_are_never_retried(failure: BaseException) -> None:
    """Only failures the policy handles are retried: anything else is raised as it is after
    a single attempt, without a sleep."""
    result, sleeps, script = run(POLICY, failures=[failure])
    assert result is failure
    assert (script.calls, sleeps) == (1, [])


def test_when_narrows_what_is_retried() -> None:
    """A policy's `when` predicate is part of what it handles: Gmail retries a transient error
    only when it is Gmail's HTTP answer, never one from below HTTP (a dropped connection)."""
    below_http = TransientProviderError("gmail messages.list: ConnectionResetError")
    below_http.__cause__ = ConnectionResetError()
    result, sleeps, script = run(GMAIL_RETRY, failures=[below_http])
    assert result is below_http
    assert (script.calls, sleeps) == (1, [])

    result, sleeps, _ = run(GMAIL_RETRY, failures=[gmail_refusal()])
    assert result == "done"
    assert sleeps == [GMAIL_RETRY.backoff]


def test_default_retry_after_and_margin_apply_to_retry_after_only() -> None:
    """A failure naming no Retry-After waits default_retry_after; the margin is added to a
    Retry-After, never to the backoff, and the cap is checked against the Retry-After the
    server gave (or the default), without the margin."""
    policy = RetryPolicy(attempts=3, default_retry_after=1.0, retry_after_margin=0.05)
    result, sleeps, _ = run(policy, failures=[transient(), transient(2.0)])
    assert result == "done"
    assert sleeps == [1.05, 2.05]

    no_told = RetryPolicy(attempts=2, backoff=0.5, retry_after_margin=0.05)
    assert run(no_told, failures=[transient()])[1] == [0.5]

    capped = replace(policy, max_retry_after=1.0)
    assert run(capped, failures=[transient(1.0)])[1] == [1.05]
    assert run(replace(capped, default_retry_after=2.0), failures=[transient()])[1] == []


def test_jitter_scales_the_backoff_by_a_draw_within_its_spread() -> None:
    """With jitter j the backoff is multiplied by a draw from uniform(1 - j, 1 + j) (injected
    here), and a Retry-After plus margin still wins over a smaller jittered backoff."""
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return high

    policy = RetryPolicy(attempts=3, backoff=1.0, jitter=0.5, retry_after_margin=0.05)
    result, sleeps, _ = run(policy, failures=[transient(), transient(5.0)], uniform=uniform)
    assert result == "done"
    assert draws == [(0.5, 1.5), (0.5, 1.5)]
    assert sleeps == [1.5, 5.05]


def test_each_policy_counts_its_own_attempts() -> None:
    """Several policies in one Retrying keep separate budgets: throttling does not use up the
    retries of outages or the other way round, and each gives up on its own count."""
    throttled = RetryPolicy(attempts=2, default_retry_after=1.0, on=(_Throttled,))
    outage = RetryPolicy(attempts=2, backoff=0.5, on=(_Retryable,))
    result, sleeps, script = run(
        throttled, outage, failures=[_Throttled("429", None), _Retryable("503")]
    )
    assert result == "done"
    assert (script.calls, sleeps) == (3, [1.0, 0.5])

    second = _Throttled("429 again", 0.0)
    result, _, script = run(
        throttled, outage, failures=[_Throttled("429", None), _Retryable("503"), second]
    )
    assert result is second
    assert script.calls == 3


def test_a_retrying_starts_over_for_every_call() -> None:
    """One Retrying may run call after call: each call gets the policy's full attempts and
    its backoff starts from the first step again."""
    sleeps: list[float] = []
    retry = retrying(POLICY, sleep=sleeps.append)
    for _ in range(2):
        assert retry(Script([transient(), transient()])) == "done"
    assert sleeps == [0.25, 0.5, 0.25, 0.5]


def test_waits_go_through_the_injected_sleep_as_floats_after_on_retry() -> None:
    """Every wait goes through the injected sleep as a plain float (tests never really sleep),
    and on_retry hears of it first: the failure, the seconds, the failure's count."""
    events: list[tuple[Any, ...]] = []
    refusal = transient(2.0)
    retry = retrying(
        POLICY,
        sleep=lambda seconds: events.append(("sleep", type(seconds), seconds)),
        on_retry=lambda failure, seconds, n: events.append(("told", failure, seconds, n)),
    )
    assert retry(Script([refusal])) == "done"
    assert events == [("told", refusal, 2.0, 1), ("sleep", float, 2.0)]


def test_a_sleep_that_raises_ends_the_call() -> None:
    """A sleep may end the call (a provider closing mid-sync interrupts its wait): what it
    raises comes out of the call, and no further attempt is made."""

    class Interrupted(Exception):
        pass

    def interrupted(seconds: float) -> None:
        raise Interrupted

    script = Script([transient(), transient()])
    with pytest.raises(Interrupted):
        retrying(POLICY, sleep=interrupted)(script)
    assert script.calls == 1


def test_the_declared_provider_policies() -> None:
    """The providers' declared policies keep their documented numbers: Gmail 5 tries from a
    0.25 s backoff with a 10 s cap; Graph 429s 5 tries waiting Retry-After (1 s by default) plus
    0.05 s under a 5 s cap; Graph outages 6 tries from a 0.5 s jittered (x0.5-1.5) backoff."""
    _, sleeps, script = run(GMAIL_RETRY, failures=[gmail_refusal() for _ in range(9)])
    assert script.calls == 5 and sleeps == [0.25, 0.5, 1.0, 2.0]
    assert run(GMAIL_RETRY, failures=[gmail_refusal(10.5)])[1] == []

    _, sleeps, script = run(THROTTLED, failures=[_Throttled("429", None) for _ in range(9)])
    assert script.calls == 5 and sleeps == [1.05] * 4
    assert run(THROTTLED, failures=[_Throttled("429", 5.5)])[1] == []

    _, sleeps, script = run(
        TRANSIENT, failures=[_Retryable("503") for _ in range(9)], uniform=lambda low, high: low
    )
    assert script.calls == 6
    assert sleeps == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert run(TRANSIENT, failures=[_Retryable("503", 6.0)])[1] == []


@pytest.mark.parametrize(
    "settings",
    [
        {"attempts": 0},
        {"attempts": 1, "backoff": -1.0},
        {"attempts": 1, "max_retry_after": -1.0},
        {"attempts": 1, "jitter": 1.0},
        {"attempts": 1, "default_retry_after": -1.0},
    ],
)
def test_a_policy_that_cannot_work_is_refused(settings: dict[str, Any]) -> None:
    """A policy is checked when it is declared: no attempt at all, negative waits or a jitter
    that could make a wait negative are ValueErrors, not surprises mid-sync."""
    with pytest.raises(ValueError):
        RetryPolicy(**settings)
