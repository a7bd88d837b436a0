"""Provider-sync drills through whole jobs: a killed full sync resumes, faults are absorbed."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.states import Cancelling

from mailsync.fakes.client import FaultPlan
from tests.support.api import Api, Tenant, hold, make_tenant, slow_down, speed_up, wait_final
from tests.support.index import (
    fake_index,
    generation_rows,
    live_index,
    mailbox_row,
)
from tests.support.processes import flow_run_pids
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
# Retry-After 0: the retries are real, the suite does not sit out a second per fault.
FAULTS = FaultPlan(share=0.2, statuses=[429, 500, 503], retry_after=0, seed=11)


def gmail_units(fakes: FakeProviders, address: str) -> int:
    return fakes.gmail.quota(address).charged_total


@pytest.mark.only_database(
    "sqlite"
)  # tests/integration/test_sync.py resumes on both; balances the groups
def test_killed_full_sync_resumes_from_its_checkpoint(
    api: Api, prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """SIGKILL the flow-run process of a full sync after it stored at least one page: the
    next full sync (a new job) continues from the stored checkpoint instead of starting over
    (the fake's per-mailbox Gmail quota charges show the stored pages were not fetched again),
    the live index was untouched meanwhile, and the end result is exactly the fake's set."""
    total, page = 2_000, 500
    tenant = make_tenant(prefect_stack.settings, fakes, ("gmail",), messages=total)
    address = tenant.gmail_address
    slow_down(fakes, "gmail", address, 300)  # ~3 s per page of 500: time to kill mid-way
    first = api.post(tenant, {"mode": "full", "provider": "gmail"})
    assert first.status_code == 202, first.text
    job_id = first.json()["data"]["job_id"]

    eventually(
        lambda: mailbox_row(prefect_stack, tenant, "gmail"),
        "a first page stored",
        until=lambda mailbox: mailbox.checkpoint,
    )
    flow_run_id = api.jobs(tenant)[0].flow_run_id  # set by the run before its first page
    assert flow_run_id
    pids = flow_run_pids(flow_run_id)
    assert pids, "the flow run's process was not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    speed_up(fakes, "gmail", address)

    killed = mailbox_row(prefect_stack, tenant, "gmail")
    assert killed.building_generation is not None and killed.checkpoint
    stored = len(generation_rows(prefect_stack, killed.id, killed.building_generation))
    assert page <= stored < total
    assert live_index(prefect_stack, tenant, "gmail") == {}  # never synced: nothing visible
    assert api.wait(tenant, job_id)["error"]["code"] == "job_crashed"

    charged_before = gmail_units(fakes, address)
    retry = api.post(tenant, {"mode": "full", "provider": "gmail"})
    assert retry.status_code == 202, retry.text
    done = api.wait(tenant, retry.json()["data"]["job_id"])
    assert done["status"] == "completed" and done["mailboxes"][0]["resumed"] is True
    resumed_units = gmail_units(fakes, address) - charged_before
    # A fresh full sync costs getProfile + 4 list pages + 2,000 gets; the resumed one skips
    # the stored pages' list calls and gets.
    fresh_units = 1 + 5 * (total // page) + 5 * total
    remaining = total - stored
    assert resumed_units <= 1 + 5 * (remaining // page + 1) + 5 * remaining < fresh_units
    assert live_index(prefect_stack, tenant, "gmail") == fake_index(fakes, "gmail", address)


def _change_the_mailboxes(fakes: FakeProviders, tenant: Tenant) -> None:
    gmail, address = fakes.gmail, tenant.gmail_address
    ids = sorted(gmail.ids(address))
    gmail.add_messages(address, 7)
    for message_id in ids[:4]:
        gmail.delete_message(address, message_id)
    for message_id in ids[4:10]:
        gmail.modify_labels(
            address, message_id, add=["Label_7", "STARRED"], remove=["UNREAD", "INBOX"]
        )
    microsoft, address = fakes.microsoft, tenant.microsoft_address
    inbox = sorted(microsoft.ids(address, folder="inbox"))
    microsoft.add_messages(address, 5, folder="inbox")
    microsoft.add_messages(address, 2, folder="sentitems")
    for message_id in inbox[:3]:
        microsoft.delete_message(address, message_id)
    microsoft.update_message(address, inbox[3], folder="sentitems")
    microsoft.update_message(address, inbox[4], folder="archive")


@pytest.mark.only_database("sqlite")  # provider faults; the index paths run on both elsewhere
def test_full_then_incremental_through_20_percent_faults(
    api: Api, prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """With a fifth of both mailboxes' provider calls failing (429/500/503 with Retry-After),
    a full sync job and then, after adds, deletions, label changes and moves at the fakes, an
    incremental job both complete, and the index holds exactly the fakes' messages with their
    labels / folders, each once."""
    tenant = make_tenant(prefect_stack.settings, fakes, messages=150)
    for provider, address in (
        ("gmail", tenant.gmail_address),
        ("microsoft", tenant.microsoft_address),
    ):
        fakes.admin(provider).set_faults(address, FAULTS)

    def sync(mode: str) -> dict[str, Any]:
        response = api.post(tenant, {"mode": mode})
        assert response.status_code == 202, response.text
        job = api.wait(tenant, response.json()["data"]["job_id"], timeout=150)
        assert job["status"] == "completed", job
        for provider, address in (
            ("gmail", tenant.gmail_address),
            ("microsoft", tenant.microsoft_address),
        ):
            assert live_index(prefect_stack, tenant, provider) == fake_index(
                fakes, provider, address
            ), provider
        return job

    full = sync("full")
    assert {m["performed_mode"] for m in full["mailboxes"]} == {"full"}
    _change_the_mailboxes(fakes, tenant)
    increment = sync("incremental")
    assert {m["performed_mode"] for m in increment["mailboxes"]} == {"incremental"}
    for provider, address in (
        ("gmail", tenant.gmail_address),
        ("microsoft", tenant.microsoft_address),
    ):
        stats = fakes.admin(provider).fault_stats(address)
        assert stats.injected > 0, provider
        indexed = len(fake_index(fakes, provider, address))
        print(f"{provider}: {stats.injected} faults injected, {indexed} messages indexed")


@pytest.mark.only_database("sqlite")  # the cancellation is Prefect's
def test_cancelling_a_running_job_from_the_ui_fails_it_as_cancelled(
    api: Api, prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """Cancel, as the Prefect UI does (state Cancelling), a job's flow run while its sync is
    running on the default (warm) worker: the run ends Cancelled, its process is gone, and
    the job reads failed with `job_cancelled`."""
    tenant = make_tenant(prefect_stack.settings, fakes, providers=("gmail",))
    initial = api.post(tenant, {}).json()["data"]["job_id"]  # the cancelled job is incremental
    assert api.wait(tenant, initial)["status"] == "completed"
    fakes.gmail.add_messages(tenant.gmail_address, 5)
    hold(fakes, "gmail", tenant.gmail_address)
    job_id = api.post(tenant, {"provider": "gmail"}).json()["data"]["job_id"]
    try:
        eventually(lambda: api.get(tenant, job_id)["status"] == "running", "the job to run", 90)
        with prefect_stack.client() as prefect:
            [run] = prefect.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[job_id]))
            )
            pids = eventually(lambda: flow_run_pids(str(run.id)), "the run's process", 30)
            prefect.set_flow_run_state(run.id, Cancelling())
            final = wait_final(prefect, run, 90)
        assert final.state is not None and final.state.is_cancelled(), final.state
        # Released only now: the sync's task thread is still inside the held provider call,
        # and the process ends once it returns (Prefect joins its task threads at exit).
        speed_up(fakes, "gmail", tenant.gmail_address)
        ended = api.wait(tenant, job_id, 60)
        assert ended["status"] == "failed" and ended["error"]["code"] == "job_cancelled", ended
        eventually(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), "its exit", 30)
    finally:
        speed_up(fakes, "gmail", tenant.gmail_address)
