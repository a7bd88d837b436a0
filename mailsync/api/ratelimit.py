"""The X-RateLimit-* figures of a response, and the general request quotas behind them.

Every response carries X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset (Unix
epoch seconds, when the next slot frees). A route that reports a quota of its own calls
`set_rate_limit` (POST /v1/email/sync reports the on-demand sync quota and is never metered
here); every other response describes one of two general quotas, each a Prefect global
concurrency limit in rate-limit mode (limit N, slot_decay_per_second N/60: a token bucket
refilled at N a minute) shared by every API process:

- per API key, `mailsync-requests:key:<api key id>`, `request_quota_per_minute` tokens:
  requests whose key authenticated on an endpoint that checks keys (the `EmailReader`
  dependency takes the token, before the scope check, so a 403 counts too);
- per client address, `mailsync-requests:address:<address>`, `address_quota_per_minute`:
  unauthenticated responses. That is a request without an Authorization header, a key that
  fails authentication (so guessing keys is throttled), or an endpoint that checks no key
  (/health, /docs, /openapi.json, unknown routes, wrong methods) whatever the header says.
  The address is the ASGI client (`scope["client"]`); behind a proxy, run uvicorn with
  --proxy-headers and --forwarded-allow-ips so it is the real client. X-Forwarded-For is
  never read here.

Who counts what: RateLimitMiddleware counts a request without an Authorization header
against the address before the app runs (and answers 429 itself); `get_principal` counts a
failed key against the address (429 instead of 401 once spent); `EmailReader` counts a
valid key; a response that none of these (nor the route) gave figures to, from an endpoint
that never looked at the key, is counted against the address when it starts, and replaced
by the 429 when the address is over quota.

Prefect refuses '/' (and '%', '&', '<', '>') in limit names, hence ':' as the separator; an
address keeps only [A-Za-z0-9.:_-], anything else becomes '_'.

The figures: Limit N; Remaining N minus the limit's active slots read right after the take;
Reset now + 60/N rounded up (the next token frees within that). Over quota: 429
rate_limited with Remaining 0 and Retry-After = Reset - now = ceil(60/N) s (at least 1).
Prefect's own Retry-After hint is not passed on: it is jittered (down to 0.75 of the decay
interval, too early to find a token) and grows with every refused take.

When Prefect cannot be asked (LimitsUnavailableError), these quotas fail open: the request is
served, a warning is logged, and the headers say the request was not counted: Limit N,
Remaining N, Reset now. A failed call costs ~1.5 s (the Prefect client retries connecting;
far longer once it has connected before), so for the next 5 s this process fails open
without asking, then one request at a time asks again. A quota of 0 (or less) turns that
quota off: no token, no headers.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.exceptions import ObjectAlreadyExists
from starlette.requests import HTTPConnection
from starlette.types import Scope

from mailsync.api.errors import ApiError
from mailsync.limits import LimitSpec, LimitsUnavailableError, PrefectLimits, Refusal

log = logging.getLogger(__name__)

KEY_LIMIT_PREFIX = "mailsync-requests:key:"
ADDRESS_LIMIT_PREFIX = "mailsync-requests:address:"
HEADER_NAMES = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")

_STATE_KEY = "rate_limit"
_KEY_CHECKED = "rate_limit_key_checked"
_UNSAFE = re.compile(r"[^A-Za-z0-9.:_\-]")

Clock = Callable[[], float]


@dataclass(frozen=True)
class RateLimitInfo:
    """What the X-RateLimit-* headers of one response say; `reset` is epoch seconds."""

    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        values = (self.limit, max(0, self.remaining), self.reset)
        return {name: str(value) for name, value in zip(HEADER_NAMES, values, strict=True)}


def _scope(target: HTTPConnection | Scope) -> Scope:
    return target.scope if isinstance(target, HTTPConnection) else target


def set_rate_limit(target: HTTPConnection | Scope, info: RateLimitInfo) -> None:
    """Record the figures the response to this request reports (in the ASGI scope state)."""
    _scope(target).setdefault("state", {})[_STATE_KEY] = info


def get_rate_limit(target: HTTPConnection | Scope) -> RateLimitInfo | None:
    info = _scope(target).get("state", {}).get(_STATE_KEY)
    return info if isinstance(info, RateLimitInfo) else None


def note_key_checked(target: HTTPConnection | Scope) -> None:
    """Record that an endpoint looked at this request's API key: the key dependencies (or
    the route itself) then decide which quota the response reports, not the middleware."""
    _scope(target).setdefault("state", {})[_KEY_CHECKED] = True


def key_was_checked(target: HTTPConnection | Scope) -> bool:
    return bool(_scope(target).get("state", {}).get(_KEY_CHECKED))


def key_limit(key_id: str, per_minute: int) -> LimitSpec:
    return LimitSpec(f"{KEY_LIMIT_PREFIX}{_safe(key_id)}", per_minute, per_minute / 60)


def address_limit(address: str, per_minute: int) -> LimitSpec:
    return LimitSpec(f"{ADDRESS_LIMIT_PREFIX}{_safe(address)}", per_minute, per_minute / 60)


def client_address(target: HTTPConnection | Scope) -> str:
    client = _scope(target).get("client")
    return str(client[0]) if client and client[0] else "unknown"


def _safe(part: str) -> str:
    return _UNSAFE.sub("_", part)[:200] or "_"


def _interval(spec: LimitSpec) -> int:
    """Whole seconds within which the next token of a limit frees, at least 1."""
    return max(1, math.ceil(60 / spec.limit))


def _worth_retrying(exc: Exception) -> bool:
    # Two processes (or threads) creating the same limit at once: the loser's create answers
    # 409, which PrefectLimits.ensure lets escape as ObjectAlreadyExists. A limit deleted
    # behind our back raises without a cause. Both pass on a second try, which finds or
    # creates the limit again. Unreachable Prefect is not retried.
    if isinstance(exc, ObjectAlreadyExists):
        return True
    cause = exc.__cause__
    return cause is None or getattr(getattr(cause, "response", None), "status_code", 0) == 409


class _Outages:
    """Which PrefectLimits failed lately: while Prefect is down, a call costs seconds (the
    client retries the connection), so after a failure the quotas fail open without asking
    for PAUSE_S; then one request at a time asks again. This holds no count of requests."""

    PAUSE_S = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: weakref.WeakKeyDictionary[PrefectLimits, float] = weakref.WeakKeyDictionary()
        self._probing: weakref.WeakSet[PrefectLimits] = weakref.WeakSet()

    def may_ask(self, limits: PrefectLimits) -> bool:
        with self._lock:
            until = self._until.get(limits)
            if until is None:
                return True
            if limits in self._probing or time.monotonic() < until:
                return False
            self._probing.add(limits)
            return True

    def answered(self, limits: PrefectLimits) -> None:
        with self._lock:
            self._until.pop(limits, None)
            self._probing.discard(limits)

    def failed(self, limits: PrefectLimits) -> None:
        with self._lock:
            self._until[limits] = time.monotonic() + self.PAUSE_S
            self._probing.discard(limits)


_outages = _Outages()


def meter(
    limits: PrefectLimits, spec: LimitSpec, clock: Clock = time.time
) -> tuple[RateLimitInfo, int | None]:
    """Take one token of `spec`: the figures, and Retry-After seconds when it was refused.

    Never raises for Prefect's sake: when Prefect cannot be asked the request is let through
    with the not-counted figures (Limit N, Remaining N, Reset now).
    """
    not_counted = RateLimitInfo(spec.limit, spec.limit, math.floor(clock())), None
    if not _outages.may_ask(limits):
        return not_counted
    outcome: Refusal | None = None
    for attempt in (1, 2):
        try:
            outcome = limits.consume(spec)
            break
        except (LimitsUnavailableError, ObjectAlreadyExists) as exc:
            if attempt == 1 and _worth_retrying(exc):
                continue
            _outages.failed(limits)
            log.warning(
                "request quotas not enforced for %.0f s: %s: %s (failing open)",
                _Outages.PAUSE_S,
                spec.name,
                exc,
            )
            return not_counted
    _outages.answered(limits)
    reset = math.ceil(clock() + 60 / spec.limit)
    if outcome is not None:
        return RateLimitInfo(spec.limit, 0, reset), _interval(spec)
    try:
        active = limits.active_slots(spec.name)
    except LimitsUnavailableError as exc:
        log.warning("could not read rate limit %s: %s", spec.name, exc)
        active = 1  # at least the token just taken
    return RateLimitInfo(spec.limit, max(0, spec.limit - active), reset), None


def _meter_into(target: HTTPConnection | Scope, spec: LimitSpec, who: str) -> RateLimitInfo:
    limits: PrefectLimits = _scope(target)["app"].state.limits
    info, retry_after = meter(limits, spec)
    set_rate_limit(target, info)
    if retry_after is not None:
        raise ApiError(
            429,
            "rate_limited",
            f"more than {spec.limit} requests a minute {who}; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    return info


def _settings(target: HTTPConnection | Scope) -> Any:
    return _scope(target)["app"].state.settings


def uncounted(target: HTTPConnection | Scope) -> RateLimitInfo | None:
    """The figures of a refusal answered before the request was identified or counted (431,
    a shed 503): the address quota, not counted (Limit N, Remaining N, Reset now), as when
    Prefect cannot be asked. The spec wants X-RateLimit-* on every response."""
    per_minute = int(_settings(target).address_quota_per_minute)
    if per_minute <= 0:
        return None
    return RateLimitInfo(per_minute, per_minute, math.floor(time.time()))


def meter_key(target: HTTPConnection | Scope, key_id: str) -> RateLimitInfo | None:
    """Count a request against its API key's quota; ApiError 429 when the quota is spent.

    Blocking (it asks Prefect): call it from a thread, as FastAPI does for plain-def
    dependencies.
    """
    per_minute = int(_settings(target).request_quota_per_minute)
    if per_minute <= 0:
        return None
    return _meter_into(target, key_limit(key_id, per_minute), "with this API key")


def meter_address(target: HTTPConnection | Scope) -> RateLimitInfo | None:
    """Count an unauthenticated request against its client address's quota; 429 when spent.

    Blocking, like `meter_key`.
    """
    per_minute = int(_settings(target).address_quota_per_minute)
    if per_minute <= 0:
        return None
    spec = address_limit(client_address(target), per_minute)
    return _meter_into(target, spec, "without a valid API key from this address")
