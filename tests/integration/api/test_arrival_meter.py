"""Every request is metered by its client address when it arrives (issue 15 point 9).

The general quotas count a request by key once its key is checked, or by address when it has
none: a client sending any Authorization header was not metered until the app ran, after it
held an overload slot. The arrival meter counts every request, whatever its headers, against
its address before it may hold a slot (MAILSYNC_ARRIVAL_QUOTA_PER_MINUTE)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from mailsync.api.app import create_app
from mailsync.settings import Settings
from tests.support.api import Tenant

ARRIVALS = 5


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metered(settings: Settings) -> Iterator[tuple[FastAPI, Clock]]:
    clock = Clock()
    quick = settings.model_copy(
        update={
            "prefect_api_url": "http://127.0.0.1:9/api",
            "arrival_quota_per_minute": ARRIVALS,
            "request_quota_per_minute": 1000,
            "address_quota_per_minute": 1000,
        }
    )
    yield create_app(quick, clock=clock), clock


def test_an_address_is_metered_on_arrival_whatever_its_authorization(
    metered: tuple[FastAPI, Clock], tenant: Tenant
) -> None:
    """Requests with a (valid or bogus) key from one address: the first ARRIVALS pass, the
    next is answered 429 `rate_limited` with Retry-After before it takes an overload slot
    (the gate admitted ARRIVALS, not more); another address is not affected; the meter
    refills with time (injectable clock)."""
    app, clock = metered
    gate = app.state.overload.general
    headers = [tenant.auth(), {"Authorization": "Bearer wbk_not-a-key"}]
    with TestClient(app, raise_server_exceptions=False, client=("192.0.2.1", 1)) as loud:
        answers = [
            loud.get("/v1/email/sync/sync_nope", headers=headers[n % 2]).status_code
            for n in range(ARRIVALS)
        ]
        assert 429 not in answers, answers
        admitted = gate.admitted
        refused = loud.get("/v1/email/sync/sync_nope", headers=tenant.auth())
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert gate.admitted == admitted  # refused before it held a slot
        with TestClient(app, raise_server_exceptions=False, client=("192.0.2.2", 1)) as quiet:
            assert quiet.get("/v1/email/sync/sync_nope", headers=tenant.auth()).status_code == 404
        clock.now += 60
        assert loud.get("/v1/email/sync/sync_nope", headers=tenant.auth()).status_code == 404
