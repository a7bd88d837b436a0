"""The general request quotas: X-RateLimit-* on every response, token buckets in the process.

Real requests through the real app (TestClient), each test with its own app, keys, client
address and a frozen clock, so the figures are exact whatever the machine's speed.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from mailsync.api.app import create_app
from mailsync.db import get_engine
from mailsync.db.tables import JobStatus, SyncJob
from mailsync.settings import Settings
from tests.support.api import Tenant, make_tenant
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually

URL = "/v1/email/sync"
NOW = 1_800_000_000.0


class FrozenClock:
    """The quotas' clock: still unless a test moves it."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def new_address() -> str:
    return f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"


@contextmanager
def client_for(
    settings: Settings,
    address: str | None = None,
    clock: FrozenClock | None = None,
    **quotas: Any,
) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update=quotas), clock=clock or FrozenClock())
    peer = (address or new_address(), 50000)
    with TestClient(app, raise_server_exceptions=False, client=peer) as client:
        yield client


def figures(response: httpx.Response) -> tuple[int, int, int]:
    h = response.headers
    return int(h["x-ratelimit-limit"]), int(h["x-ratelimit-remaining"]), int(h["x-ratelimit-reset"])


def assert_rate_limited(response: httpx.Response, retry_after: int) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "rate_limited"
    assert body["error"]["message"] and body["error"]["request_id"]
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert response.headers["retry-after"] == str(retry_after)
    _, remaining, reset = figures(response)
    assert remaining == 0 and reset == NOW + retry_after


@pytest.fixture
def tenant(settings: Settings, fakes: FakeProviders) -> Tenant:
    return make_tenant(settings, fakes, providers=())


def test_key_quota_counts_down_then_refuses_and_other_keys_are_unaffected(
    settings: Settings, tenant: Tenant
) -> None:
    """GET with a key reports that key's quota: Remaining counts down per request, Reset is
    when the next token arrives (60/N s away), the request after the last token is 429 with
    Retry-After 60/N; another key keeps its own full quota and the address is not charged."""
    with client_for(settings, request_quota_per_minute=3) as client:
        seen = []
        for _ in range(3):
            response = client.get(f"{URL}/sync_nope", headers=tenant.auth(tenant.reader))
            assert response.status_code == 404, response.text
            seen.append(figures(response))
        assert seen == [(3, 2, NOW + 20), (3, 1, NOW + 20), (3, 0, NOW + 20)]
        assert_rate_limited(client.get(f"{URL}/x", headers=tenant.auth(tenant.reader)), 20)

        other = client.get(f"{URL}/sync_nope", headers=tenant.auth(tenant.writer))
        assert other.status_code == 404 and figures(other)[:2] == (3, 2)
        unauthenticated = client.get("/health")
        assert figures(unauthenticated)[:2] == (120, 119)  # the address's first token


def test_the_key_quota_refills_with_time(settings: Settings, tenant: Tenant) -> None:
    """Once spent, a key's quota gives one request back every 60/N s, never more than N."""
    clock = FrozenClock()
    with client_for(settings, clock=clock, request_quota_per_minute=2) as client:

        def status() -> int:
            return client.get(f"{URL}/sync_nope", headers=tenant.auth(tenant.reader)).status_code

        assert [status(), status(), status()] == [404, 404, 429]
        clock.now += 29
        assert status() == 429
        clock.now += 1
        assert [status(), status()] == [404, 429]
        clock.now += 3600
        assert [status(), status(), status()] == [404, 404, 429]


def test_a_403_counts_against_the_key(settings: Settings, tenant: Tenant) -> None:
    """An authenticated caller lacking the scope is still metered: 403 with its key's
    figures, then 429 once the key's quota is spent."""
    with client_for(settings, request_quota_per_minute=2) as client:
        for left in (1, 0):
            response = client.get(f"{URL}/x", headers=tenant.auth(tenant.no_scope))
            assert response.status_code == 403 and figures(response)[:2] == (2, left)
        assert_rate_limited(client.get(f"{URL}/x", headers=tenant.auth(tenant.no_scope)), 30)


def test_endpoints_without_a_key_check_meter_the_client_address(
    settings: Settings, tenant: Tenant
) -> None:
    """/health, /openapi.json, /docs and unknown routes report and enforce the address quota,
    with or without an Authorization header (they never check it); the 429 carries the
    envelope and the request id; a valid key on a key-checking route is not affected."""
    with client_for(settings, address_quota_per_minute=5) as client:
        key = tenant.auth(tenant.reader)
        responses = [
            client.get("/health"),
            client.get("/openapi.json"),
            client.get("/docs"),
            client.get("/v1/nothing"),
            client.get("/health", headers=key),
        ]
        # /health answers 503 here (no Prefect server behind this app): served all the same.
        statuses = [r.status_code for r in responses]
        assert statuses[1:4] == [200, 200, 404] and {statuses[0], statuses[4]} <= {200, 503}
        assert [figures(r)[:2] for r in responses] == [(5, 4), (5, 3), (5, 2), (5, 1), (5, 0)]
        assert all(r.headers["x-request-id"] for r in responses)

        refused = client.get("/openapi.json", headers={"X-Request-ID": "rl-check-1"})
        assert_rate_limited(refused, 12)
        assert refused.headers["x-request-id"] == "rl-check-1"
        assert_rate_limited(client.get("/health", headers=key), 12)
        assert_rate_limited(client.delete(URL, headers=key), 12)

        served = client.get(f"{URL}/sync_nope", headers=key)
        assert served.status_code == 404 and figures(served)[:2] == (600, 599)


def test_failed_authentication_counts_against_the_address(
    settings: Settings, tenant: Tenant
) -> None:
    """Missing, malformed and unknown keys get 401 with the address figures and each costs a
    token of the address, so guessing ends in 429 rate_limited; a valid key from the same
    address still works."""
    address = f"fe80::{secrets.token_hex(2)}%eth0"
    with client_for(settings, address, address_quota_per_minute=3) as client:
        attempts = [
            client.get(f"{URL}/x", headers={"Authorization": "Bearer wbk_" + "a" * 40}),
            client.post(URL, headers={"Authorization": "Basic dXNlcjpwYXNz"}, json={}),
            client.get(f"{URL}/x"),
        ]
        assert [r.status_code for r in attempts] == [401, 401, 401]
        assert [figures(r)[:2] for r in attempts] == [(3, 2), (3, 1), (3, 0)]

        assert_rate_limited(
            client.get(f"{URL}/x", headers={"Authorization": "Bearer wbk_" + "b" * 40}), 20
        )
        assert_rate_limited(client.post(URL, json={}), 20)
        served = client.get(f"{URL}/sync_nope", headers=tenant.auth(tenant.reader))
        assert served.status_code == 404 and figures(served)[0] == 600


def test_concurrent_requests_on_one_key_admit_exactly_the_quota(
    settings: Settings, tenant: Tenant
) -> None:
    """12 requests racing on one key with a quota of 4 (a fresh bucket, so the racers also
    race to create it): exactly 4 are served, the other 8 are 429."""
    with client_for(settings, request_quota_per_minute=4) as client:
        start = threading.Barrier(12)

        def one(_: int) -> int:
            start.wait()
            return client.get(f"{URL}/sync_nope", headers=tenant.auth(tenant.reader)).status_code

        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(one, range(12)))
        assert sorted(statuses) == [404] * 4 + [429] * 8


def wait_until_done(stack: PrefectStack, job_id: str, timeout: float = 90) -> None:
    """Let the sync finish so no stray run overlaps later tests' provider request counts."""

    def ended() -> bool:
        with Session(get_engine(stack.settings.resolved_database_url)) as session:
            job = session.get(SyncJob, job_id)
            return job is not None and JobStatus(job.status).terminal

    eventually(ended, f"job {job_id} to finish", timeout)


@pytest.mark.integration
def test_sync_trigger_is_not_metered_by_the_general_quota(
    prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """POST /v1/email/sync takes no token of the key's request quota and its figures are
    the sync quota's, not the general quota's; a GET with the same key keeps counting from
    where it was (the clock stands still, so no token comes back meanwhile)."""
    tenant = make_tenant(prefect_stack.settings, fakes, providers=("gmail",))
    with client_for(prefect_stack.settings, request_quota_per_minute=7) as client:
        first = client.get(f"{URL}/sync_nope", headers=tenant.auth())
        assert first.status_code == 404 and figures(first)[:2] == (7, 6)

        triggered = client.post(URL, headers=tenant.auth(), json={"provider": "gmail"})
        assert triggered.status_code == 202, triggered.text
        assert figures(triggered)[0] == prefect_stack.settings.sync_quota != 7
        refused = client.post(URL, headers=tenant.auth(tenant.reader), json={})
        assert refused.status_code == 403

        again = client.get(f"{URL}/{triggered.json()['data']['job_id']}", headers=tenant.auth())
        assert again.status_code == 200 and figures(again)[:2] == (7, 5)
        wait_until_done(prefect_stack, triggered.json()["data"]["job_id"])


def test_quotas_hold_without_prefect(settings: Settings, fakes: FakeProviders) -> None:
    """The general quotas need nothing outside the process: with Prefect unreachable they
    are still enforced (429 past the quota, never a 5xx)."""
    offline = settings.model_copy(update={"prefect_api_url": "http://127.0.0.1:9/api"})
    tenant = make_tenant(settings, fakes, providers=())
    with client_for(offline, request_quota_per_minute=1, address_quota_per_minute=1) as client:
        docs = [client.get("/openapi.json") for _ in range(2)]
        reads = [client.get(f"{URL}/sync_nope", headers=tenant.auth()) for _ in range(2)]
    assert [r.status_code for r in docs + reads] == [200, 429, 404, 429]
    assert [figures(r)[:2] for r in docs + reads] == [(1, 0)] * 4


def test_the_messages_api_is_metered_like_every_route(settings: Settings, tenant: Tenant) -> None:
    """Searches, message reads and refused searches (400) all take a token of the key's
    quota and carry X-RateLimit-*; once it is spent a search is 429 like any request."""
    with client_for(settings, request_quota_per_minute=4) as client:
        auth = tenant.auth(tenant.reader)
        answers = [
            client.get("/v1/email/messages", params={"q": "invoice"}, headers=auth),
            client.get("/v1/email/messages", params={"limit": "0"}, headers=auth),
            client.get("/v1/email/messages/msg_aaaaaaaaaaaaaaaaaaaaaaaa", headers=auth),
            client.get("/v1/email/messages", headers=auth),
        ]
        assert [r.status_code for r in answers] == [200, 400, 404, 200], [r.text for r in answers]
        assert [figures(r) for r in answers] == [(4, n, NOW + 15) for n in (3, 2, 1, 0)]
        assert_rate_limited(client.get("/v1/email/messages", headers=auth), 15)
