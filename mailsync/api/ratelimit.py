"""The X-RateLimit-* figures of a response, and the general request quotas behind them.

Every response carries X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset (Unix
epoch seconds, when the next slot frees). A route that reports a quota of its own calls
`set_rate_limit` (POST /v1/email/sync reports the on-demand sync quota and is never metered
here); every other response describes one of two general quotas, each a token bucket of N
tokens refilled at N a minute (core/rules/token_buckets.py), kept in this API process:

- per API key, `key:<api key id>`, `request_quota_per_minute` tokens: requests whose key
  authenticated on an endpoint that checks keys (the `EmailReader` dependency takes the
  token, before the scope check, so a 403 counts too);
- per client address, `address:<address>`, `address_quota_per_minute`: unauthenticated
  responses. That is a request without an Authorization header, a key that fails
  authentication (so guessing keys is throttled), or an endpoint that checks no key
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

A provider's push request (`/v1/push/...`, no API key: it proves itself) is counted against
neither but against `push:<address>`, `push_quota_per_minute` (RateLimitMiddleware, before the
app), whose figures it reports.

Before either, every request is counted when it arrives against its address's arrival
quota, `arrival:<address>`, `arrival_quota_per_minute` (ArrivalMeterMiddleware, outside the
overload gates): whatever its headers, an address sending more is answered 429 before it may
hold a slot. It is a flood bound, far above the general quotas, and its figures show only on
its own 429 (the X-RateLimit-* of other answers stay the general quota's).

The figures: Limit N; Remaining the whole tokens left after the take; Reset when the next
token arrives (now when the bucket is full). Over quota: 429 rate_limited with Remaining 0
and Retry-After the whole seconds until a token is there (at least 1).

Why in the process and not in Prefect or the database: a quota asked of Prefect cost a
Prefect call per HTTP request (and failed open whenever Prefect was slow or down); here a
take costs microseconds and always holds. Each API process counts on its own: with P API
processes behind a balancer a client gets up to P x N a minute, so size N for that. The
exact cross-process rules (6 on-demand syncs per hour, one full sync at a time) stay on
Prefect's concurrency limits. A quota of 0 (or less) turns that quota off: no token, no
headers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import Scope

from mailsync.api.errors import ApiError
from mailsync.core.rules.token_buckets import TokenBuckets

KEY_PREFIX = "key:"
ADDRESS_PREFIX = "address:"
ARRIVAL_PREFIX = "arrival:"
PUSH_PREFIX = "push:"
HEADER_NAMES = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")

_STATE_KEY = "rate_limit"
_KEY_CHECKED = "rate_limit_key_checked"


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


def key_bucket(key_id: str) -> str:
    return f"{KEY_PREFIX}{key_id}"


def address_bucket(address: str) -> str:
    return f"{ADDRESS_PREFIX}{address}"


def client_address(target: HTTPConnection | Scope) -> str:
    client = _scope(target).get("client")
    return str(client[0]) if client and client[0] else "unknown"


def _meter_into(
    target: HTTPConnection | Scope, key: str, per_minute: int, who: str
) -> RateLimitInfo:
    buckets: TokenBuckets = _scope(target)["app"].state.request_quotas
    taken = buckets.take(key, per_minute, 60.0)
    info = RateLimitInfo(per_minute, taken.remaining, math.ceil(taken.reset_at))
    set_rate_limit(target, info)
    if not taken.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"more than {per_minute} requests a minute {who}; retry in {taken.retry_after} s",
            headers={"Retry-After": str(taken.retry_after)},
        )
    return info


def _settings(target: HTTPConnection | Scope) -> Any:
    return _scope(target)["app"].state.settings


def uncounted(target: HTTPConnection | Scope) -> RateLimitInfo | None:
    """The figures of a refusal answered before the request was identified or counted (431,
    a shed 503): the address quota, not counted (Limit N, Remaining N, Reset now). The spec
    wants X-RateLimit-* on every response."""
    per_minute = int(_settings(target).address_quota_per_minute)
    if per_minute <= 0:
        return None
    return RateLimitInfo(per_minute, per_minute, math.floor(time.time()))


def meter_key(target: HTTPConnection | Scope, key_id: str) -> RateLimitInfo | None:
    """Count a request against its API key's quota; ApiError 429 when the quota is spent."""
    per_minute = int(_settings(target).request_quota_per_minute)
    if per_minute <= 0:
        return None
    return _meter_into(target, key_bucket(key_id), per_minute, "with this API key")


def meter_address(target: HTTPConnection | Scope) -> RateLimitInfo | None:
    """Count an unauthenticated request against its client address's quota; 429 when spent."""
    per_minute = int(_settings(target).address_quota_per_minute)
    if per_minute <= 0:
        return None
    key = address_bucket(client_address(target))
    return _meter_into(target, key, per_minute, "without a valid API key from this address")


def meter_push(target: HTTPConnection | Scope) -> RateLimitInfo | None:
    """Count a provider's push request against its address's push quota (not the general
    address quota: Graph and Pub/Sub send thousands a minute from few addresses, each request
    proving itself); 429 when spent, which the providers retry later."""
    per_minute = int(_settings(target).push_quota_per_minute)
    if per_minute <= 0:
        return None
    key = f"{PUSH_PREFIX}{client_address(target)}"
    return _meter_into(target, key, per_minute, "of push notifications from this address")


def meter_arrival(target: HTTPConnection | Scope) -> None:
    """Count an arriving request against its address's arrival quota; ApiError 429 (its
    figures set on the scope) when spent. A request that passes gets no figures from it."""
    per_minute = int(_settings(target).arrival_quota_per_minute)
    if per_minute <= 0:
        return
    buckets: TokenBuckets = _scope(target)["app"].state.request_quotas
    taken = buckets.take(f"{ARRIVAL_PREFIX}{client_address(target)}", per_minute, 60.0)
    if taken.allowed:
        return
    set_rate_limit(target, RateLimitInfo(per_minute, taken.remaining, math.ceil(taken.reset_at)))
    raise ApiError(
        429,
        "rate_limited",
        f"more than {per_minute} requests a minute from this address; "
        f"retry in {taken.retry_after} s",
        headers={"Retry-After": str(taken.retry_after)},
    )
