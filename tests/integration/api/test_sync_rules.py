"""The sync rules under real concurrent HTTP requests: 409, 429, Idempotency-Key, headers."""

from __future__ import annotations

import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from mailsync.core.rules.admission import mailbox_limit
from mailsync.db import get_engine
from mailsync.db.tables import RunLease, SyncJob, utcnow
from mailsync.orchestration.limits import PrefectLimits
from tests.support.api import (
    Api,
    Tenant,
    hold,
    make_tenant,
    slow_down,
    speed_up,
    start_ui_run,
    wait_final,
)
from tests.support.index import fake_index, live_index, mailbox_row
from tests.support.processes import flow_run_pids
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
URL = "/v1/email/sync"


@pytest.fixture
def tenant(prefect_stack: PrefectStack, fakes: FakeProviders) -> Tenant:
    return make_tenant(prefect_stack.settings, fakes)


def test_50_parallel_full_syncs_admit_exactly_one(
    api: Api, tenant: Tenant, fakes: FakeProviders
) -> None:
    """50 concurrent full-sync requests for one workspace and provider: exactly one 202, 49
    409 sync_in_progress naming that job, no 5xx (a request shed with 503 is sent again);
    the 409s take no quota slot."""
    hold(fakes, "gmail", tenant.gmail_address)  # outlive the burst
    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        responses = list(
            pool.map(
                lambda _: api.post(tenant, {"mode": "full", "provider": "gmail"}),
                range(50),
            )
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] + [409] * 49, (statuses, time.monotonic() - started)
    accepted = next(r for r in responses if r.status_code == 202).json()["data"]["job_id"]
    for response in responses:
        if response.status_code == 409:
            error = response.json()["error"]
            assert error["code"] == "sync_in_progress" and error["job_id"] == accepted
            assert response.headers["x-ratelimit-remaining"] == "5"
    assert len(api.jobs(tenant)) == 1
    speed_up(fakes, "gmail", tenant.gmail_address)  # the burst is over
    assert api.wait(tenant, accepted)["status"] == "completed"
    # Once it ended, the slot is free again.
    assert api.post(tenant, {"mode": "full", "provider": "gmail"}).status_code == 202


@pytest.mark.only_database("postgresql")  # the slot is Prefect's
def test_incremental_is_refused_while_a_full_sync_runs(
    api: Api, tenant: Tenant, fakes: FakeProviders
) -> None:
    """Any request naming a provider with a full sync queued or running gets 409; other
    providers are unaffected."""
    hold(fakes, "microsoft", tenant.microsoft_address)
    full = api.post(tenant, {"mode": "full", "provider": "microsoft"})
    assert full.status_code == 202
    job_id = full.json()["data"]["job_id"]
    for body in ({}, {"provider": "microsoft"}, {"mode": "full"}):
        refused = api.post(tenant, body)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["job_id"] == job_id
    assert api.post(tenant, {"provider": "gmail"}).status_code == 202
    speed_up(fakes, "microsoft", tenant.microsoft_address)
    assert api.wait(tenant, job_id)["status"] == "completed"


def test_idempotency_key_under_concurrency(api: Api, tenant: Tenant, fakes: FakeProviders) -> None:
    """20 concurrent requests with one Idempotency-Key create exactly one job and all get
    the identical body (a request shed with 503 under the burst, or told the key is still in
    use after the API's wait, gets it when retried after its Retry-After); a different body
    with that key is 422; replays take no quota."""
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(20) as pool:
        responses = list(
            pool.map(
                lambda _: api.post(tenant, {"provider": "gmail"}, **{"Idempotency-Key": key}),
                range(20),
            )
        )
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
    assert len({r.text for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19
    assert len(api.jobs(tenant)) == 1
    assert {r.headers["x-ratelimit-remaining"] for r in responses} == {"5"}
    reused = api.post(tenant, {"provider": "microsoft"}, **{"Idempotency-Key": key})
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    bad = api.post(tenant, {}, **{"Idempotency-Key": "not-a-uuid"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Idempotency-Key"
    other = make_tenant(api.stack.settings, fakes, providers=("gmail",))
    fresh = api.post(other, {"provider": "gmail"}, **{"Idempotency-Key": key})
    assert fresh.status_code == 202 and "idempotent-replayed" not in fresh.headers


@pytest.mark.only_database("postgresql")  # Prefect holds the quota; the rows are incidental
def test_quota_is_six_per_rolling_hour(api: Api, tenant: Tenant, fakes: FakeProviders) -> None:
    """30 requests in a row: exactly 6 accepted with Remaining 5..0, then 429 with a correct
    Retry-After; another workspace is unaffected; once the hour has passed, accepted again."""
    started = utcnow()
    remaining, statuses, retry_after = [], [], []
    for _ in range(30):
        response = api.post(tenant, {"provider": "gmail"})
        statuses.append(response.status_code)
        remaining.append(int(response.headers["x-ratelimit-remaining"]))
        assert int(response.headers["x-ratelimit-limit"]) == 6
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limited"
            retry_after.append(int(response.headers["retry-after"]))
            reset = int(response.headers["x-ratelimit-reset"])
    assert statuses == [202] * 6 + [429] * 24
    assert remaining[:6] == [5, 4, 3, 2, 1, 0] and set(remaining[6:]) == {0}
    first_free = started.timestamp() + 3600
    assert all(first_free - 60 <= started.timestamp() + r <= first_free + 5 for r in retry_after)
    assert abs(reset - first_free) <= 5
    other = make_tenant(api.stack.settings, fakes, providers=("gmail",))
    assert api.post(other, {"provider": "gmail"}).status_code == 202
    api.clock.offset = timedelta(seconds=3601)
    again = api.post(tenant, {"provider": "gmail"})
    assert again.status_code == 202, again.text
    assert again.headers["x-ratelimit-remaining"] == "5"


@pytest.mark.only_database("sqlite")  # the slot is Prefect's; the 50-way race covers both
def test_full_sync_started_in_prefect_ui_and_api_exclude_each_other(
    api: Api, tenant: Tenant, fakes: FakeProviders
) -> None:
    """A full sync started through Prefect (as the UI does) blocks an API full sync with 409
    naming it; and a UI-started full sync fails fast while an API one holds the slot."""
    hold(fakes, "microsoft", tenant.microsoft_address)
    with api.stack.client() as prefect:
        start_ui_run(prefect, tenant.workspace_id, ["microsoft"], "full")
        ui_job = _wait_for_running_job(api, tenant)
        refused = api.post(tenant, {"mode": "full", "provider": "microsoft"})
        assert refused.status_code == 409 and refused.json()["error"]["job_id"] == ui_job.id
        speed_up(fakes, "microsoft", tenant.microsoft_address)
        assert api.wait(tenant, ui_job.id)["status"] == "completed"

        hold(fakes, "microsoft", tenant.microsoft_address)  # the UI run starts meanwhile
        accepted = api.post(tenant, {"mode": "full", "provider": "microsoft"})
        assert accepted.status_code == 202
        run = wait_final(prefect, start_ui_run(prefect, tenant.workspace_id, ["microsoft"], "full"))
        assert run.state is not None and run.state.is_failed(), run.state
        failed = api.get(tenant, run.name)
        assert failed["error"]["code"] == "sync_in_progress"
        speed_up(fakes, "microsoft", tenant.microsoft_address)  # let the API's run finish
        assert api.wait(tenant, accepted.json()["data"]["job_id"])["status"] == "completed"


def _wait_for_running_job(api: Api, tenant: Tenant, timeout: float = 60) -> SyncJob:
    running = eventually(
        lambda: [j for j in api.jobs(tenant) if j.status == "running"], "a running job", timeout
    )
    return running[0]


@pytest.mark.only_database("postgresql")  # crash handling is Prefect's
def _recorded_leases(stack: PrefectStack, flow_run_id: str) -> int:
    with Session(get_engine(stack.settings.resolved_database_url)) as session:
        return len(session.exec(select(RunLease).where(RunLease.flow_run_id == flow_run_id)).all())


def test_killed_full_sync_frees_the_slot(
    api: Api, tenant: Tenant, fakes: FakeProviders, prefect_stack: PrefectStack
) -> None:
    """SIGKILL the process running a full sync: a new full sync is accepted within the lease
    time (here sooner: the worker reports the crash, and admission sees it in Prefect); the
    killed job reads as failed. The mailbox's turn, which the run recorded, is given back by
    the crash hook too, well before its lease could have expired (at the earliest a lease
    time less one renewal interval after the kill): the next sync of the mailbox does not
    wait a minute for it."""
    hold(fakes, "microsoft", tenant.microsoft_address)
    first = api.post(tenant, {"mode": "full", "provider": "microsoft"})
    assert first.status_code == 202
    job = _wait_for_running_job(api, tenant)
    assert job.flow_run_id
    turn = mailbox_limit(mailbox_row(prefect_stack, tenant, "microsoft").id).name
    with prefect_stack.client() as prefect:
        limits = PrefectLimits(lambda: prefect)
        flow_run_id = job.flow_run_id
        eventually(  # the run records its turn just after taking it
            lambda: (limits.active_slots(turn), _recorded_leases(prefect_stack, flow_run_id)),
            "the run holding the mailbox's turn, recorded",
            until=lambda held: held == (1, 1),
        )
        pids = flow_run_pids(job.flow_run_id)
        assert pids, "the flow run's process was not found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        lease = prefect_stack.settings.full_sync_lease_seconds
        eventually(
            lambda: limits.active_slots(turn) == 0,
            "the killed run's mailbox turn given back",
            timeout=lease * 2 / 3 - 5,
        )
    assert _recorded_leases(prefect_stack, job.flow_run_id) == 0
    speed_up(fakes, "microsoft", tenant.microsoft_address)
    retry = eventually(
        lambda: api.post(tenant, {"mode": "full", "provider": "microsoft"}),
        "a full sync accepted after the kill",
        90,
        1,
        until=lambda response: response.status_code != 409,
    )
    assert retry.status_code == 202, retry.text
    assert time.monotonic() - killed < 90
    crashed = api.get(tenant, job.id)
    assert crashed["status"] == "failed" and crashed["error"]["code"] == "job_crashed"
    assert api.wait(tenant, retry.json()["data"]["job_id"])["status"] == "completed"


@pytest.mark.only_database("sqlite")  # the order is the API's
def test_order_of_checks(api: Api, prefect_stack: PrefectStack, fakes: FakeProviders) -> None:
    """Authentication, validation, idempotency, 409, 429, create: a 403 does not consume an
    Idempotency-Key; a replay wins over a running full sync's 409; a 409 wins over an
    exhausted quota; refused requests and replays take no slot."""
    tenant = make_tenant(prefect_stack.settings, fakes)
    key = str(uuid.uuid4())
    unknown = api.post(tenant, {"provider": "yahoo"}, **{"Idempotency-Key": key})
    assert unknown.status_code == 400  # validation came first: the key is still unused
    hold(fakes, "microsoft", tenant.microsoft_address)  # busy until released below
    first = api.post(tenant, {"mode": "full", "provider": "microsoft"}, **{"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    assert first.headers["x-ratelimit-remaining"] == "5"
    replay = api.post(tenant, {"mode": "full", "provider": "microsoft"}, **{"Idempotency-Key": key})
    assert replay.status_code == 202 and replay.json() == first.json()  # not a 409
    busy = api.post(tenant, {})
    assert busy.status_code == 409 and busy.headers["x-ratelimit-remaining"] == "5"
    for _ in range(5):
        assert api.post(tenant, {"provider": "gmail"}).status_code == 202
    assert api.post(tenant, {"provider": "gmail"}).status_code == 429
    still_busy = api.post(tenant, {})  # quota spent and microsoft busy: 409 comes first
    assert still_busy.status_code == 409 and still_busy.headers["x-ratelimit-remaining"] == "0"
    speed_up(fakes, "microsoft", tenant.microsoft_address)
    assert api.wait(tenant, first.json()["data"]["job_id"])["status"] == "completed"


@pytest.mark.only_database("postgresql")  # the turn is Prefect's
def test_two_syncs_of_one_mailbox_take_turns(
    api: Api, prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """A first incremental sync (which builds the index like a full one) and a full sync of
    the same mailbox, both accepted (an incremental does not block a full sync): the second
    waits for the mailbox's turn and makes no progress while the first runs, then both
    complete and the index equals the fake's (two builds at once could leave it empty)."""
    tenant = make_tenant(prefect_stack.settings, fakes, providers=("gmail",), messages=1200)
    slow_down(fakes, "gmail", tenant.gmail_address, 1000)  # ~10 s a page of 500
    first = api.post(tenant, {"provider": "gmail"}).json()["data"]["job_id"]
    eventually(
        lambda: (api.get(tenant, first).get("progress") or {}).get("processed"),
        "the first sync's progress",
    )
    second = api.post(tenant, {"mode": "full", "provider": "gmail"})
    assert second.status_code == 202, second.text
    second_id = second.json()["data"]["job_id"]
    overlapping = 0  # looks at the second while the first was still running
    for _ in range(10):
        second_progress = (api.get(tenant, second_id).get("progress") or {}).get("processed")
        if api.get(tenant, first)["status"] != "running":
            break
        assert not second_progress, "the second sync ran beside the first"
        overlapping += 1
        time.sleep(0.3)
    assert overlapping >= 2, "the first sync ended too soon to tell"
    speed_up(fakes, "gmail", tenant.gmail_address)
    assert api.wait(tenant, first)["status"] == "completed"
    done = api.wait(tenant, second_id)
    assert done["status"] == "completed", done
    assert live_index(prefect_stack, tenant, "gmail") == fake_index(
        fakes, "gmail", tenant.gmail_address
    )
