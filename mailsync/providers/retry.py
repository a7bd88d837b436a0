"""The providers' one retry policy: a declared value object run by tenacity, honouring Retry-After.

A provider declares a `RetryPolicy` per kind of failure it waits out in-process (like rq's
`Retry(max=3, interval=[...])`) and runs a call through `retrying(...)`. What a policy gives up
on is raised as it is, so the provider keeps translating errors at its own boundary:

    policy = RetryPolicy(attempts=5, backoff=0.25, max_retry_after=10.0)
    result = retrying(policy, sleep=self._sleep)(request.execute)
"""

from __future__ import annotations

import math
import random
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import tenacity

from mailsync.providers.base import TransientProviderError

# (failure, seconds about to be slept, how many failures of its kind so far)
OnRetry = Callable[[BaseException, float, int], None]
Uniform = Callable[[float, float], float]


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of failure is retried in-process.

    `attempts` tries in all, the first included. After the n-th failure the wait is the larger
    of the backoff, `backoff * 2 ** (n - 1)` times a factor drawn from `1 ± jitter`, and the
    failure's `retry_after` (or `default_retry_after` when it names none) plus
    `retry_after_margin`. A Retry-After beyond `max_retry_after` is not waited out: the failure
    is raised at once, still carrying it, for the caller to schedule. Only failures that are
    instances of `on` and pass `when` are retried; any other is raised at once, untouched.
    """

    attempts: int
    backoff: float = 0.0
    max_retry_after: float = math.inf
    jitter: float = 0.0
    default_retry_after: float | None = None
    retry_after_margin: float = 0.0
    on: tuple[type[BaseException], ...] = (TransientProviderError,)
    when: Callable[[BaseException], bool] | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")
        if min(self.backoff, self.max_retry_after, self.retry_after_margin) < 0:
            raise ValueError("backoff, max_retry_after and retry_after_margin cannot be negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be within [0, 1)")
        if self.default_retry_after is not None and self.default_retry_after < 0:
            raise ValueError("default_retry_after cannot be negative")

    def handles(self, failure: BaseException) -> bool:
        """Whether `failure` is of the kind this policy retries."""
        return isinstance(failure, self.on) and (self.when is None or self.when(failure))

    def delay(
        self, failures: int, failure: BaseException, uniform: Uniform = random.uniform
    ) -> float | None:
        """Seconds to wait after the `failures`-th failure of this kind (`failure` the latest)
        before trying again; None to give up: attempts spent, or a Retry-After past the cap."""
        if failures >= self.attempts:
            return None
        told: float | None = getattr(failure, "retry_after", None)
        if told is None:
            told = self.default_retry_after
        if told is not None and told > self.max_retry_after:
            return None
        wait = self.backoff * 2 ** (failures - 1)
        if self.jitter:
            wait *= uniform(1 - self.jitter, 1 + self.jitter)
        if told is not None:
            wait = max(wait, told + self.retry_after_margin)
        return wait


def retrying(
    *policies: RetryPolicy,
    sleep: Callable[[float], None],
    on_retry: OnRetry | None = None,
    uniform: Uniform = random.uniform,
) -> tenacity.Retrying:
    """A tenacity `Retrying` running a call under `policies`: the first policy that handles a
    failure counts it against its own attempts and sets the wait; a failure none handles, or
    one its policy gives up on, is re-raised as it is. `sleep` does the waiting (injectable:
    tests pass a recorder, a provider one that a closing sync interrupts); `on_retry` is told
    of each wait before it starts."""
    if not policies:
        raise ValueError("retrying needs at least one policy")
    tally = _Tally(policies, uniform)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None:
            on_retry(_failure(state), state.upcoming_sleep, tally.run(state).failures)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(tally.handles),
        wait=tally.wait,
        stop=tally.stop,
        before_sleep=before_sleep,
        sleep=lambda seconds: sleep(float(seconds)),
        reraise=True,
    )


def _failure(state: tenacity.RetryCallState) -> BaseException:
    outcome = state.outcome
    failure = outcome.exception() if outcome is not None else None
    assert failure is not None, "tenacity waits only after a failed attempt"
    return failure


@dataclass
class _Run:
    state: weakref.ref[tenacity.RetryCallState]  # whose run this is
    counts: list[int]
    failures: int = 0  # of the latest failure's kind
    give_up: bool = False


class _Tally:
    """Each policy's failures within one run of a call, per thread, so one Retrying could
    serve several calls (tenacity keeps its own state per thread the same way)."""

    def __init__(self, policies: tuple[RetryPolicy, ...], uniform: Uniform) -> None:
        self._policies = policies
        self._uniform = uniform
        self._local = threading.local()

    def handles(self, failure: BaseException) -> bool:
        return any(policy.handles(failure) for policy in self._policies)

    def run(self, state: tenacity.RetryCallState) -> _Run:
        run: _Run | None = getattr(self._local, "run", None)
        if run is None or run.state() is not state:  # a new run of a call: counts start over
            run = self._local.run = _Run(weakref.ref(state), [0] * len(self._policies))
        return run

    def wait(self, state: tenacity.RetryCallState) -> float:
        run = self.run(state)
        failure = _failure(state)
        index = next(i for i, p in enumerate(self._policies) if p.handles(failure))
        run.counts[index] += 1
        run.failures = run.counts[index]
        delay = self._policies[index].delay(run.failures, failure, self._uniform)
        run.give_up = delay is None
        return 0.0 if delay is None else delay

    def stop(self, state: tenacity.RetryCallState) -> bool:
        return self.run(state).give_up
