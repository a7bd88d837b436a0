"""Scheduled refreshes and the nightly full sync: which mailboxes are due, what is skipped,
the jobs they belong to; and one refresh round through the real Prefect stack."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.states import Scheduled
from sqlmodel import Session, select

from mailsync.api.app import create_app
from mailsync.core import workspaces
from mailsync.core.jobs import store as jobstore
from mailsync.core.jobs.contract import JobEnd, JobRef
from mailsync.core.rules.admission import full_sync_limit, mailbox_limit
from mailsync.core.schedule import nightly, refresh, summaries
from mailsync.core.sync import index
from mailsync.core.sync.engine import MailboxResult
from mailsync.core.sync.index import Counts
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import Mailbox, SyncJob, utcnow
from mailsync.errors import SyncInProgressError
from mailsync.orchestration.limits import PrefectLimits
from mailsync.orchestration.orchestrator import job_tags
from mailsync.orchestration.rounds import read_busy
from mailsync.providers.registry import PROVIDERS
from tests.support.api import make_tenant, wait_final
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _workspace(session: Session, *mailboxes: tuple[str, datetime | None]) -> str:
    """A workspace with mailboxes (provider, last synced at); the credentials are dummies."""
    workspace_id = f"rf-{secrets.token_hex(4)}"
    workspaces.create_workspace(session, workspace_id)
    for provider, synced in mailboxes:
        session.add(
            Mailbox(
                workspace_id=workspace_id,
                provider=provider,
                address=f"{provider}-{secrets.token_hex(3)}@example.com",
                credentials_encrypted="x",
                last_synced_at=synced,
            )
        )
    session.flush()
    return workspace_id


def test_due_means_never_synced_or_older_than_the_interval(database_url: str) -> None:
    """Never-synced mailboxes and those last synced an interval ago (less a tenth, so a
    mailbox synced seconds into the previous round is not skipped a round) are due; recent
    ones are not; the workspace filter narrows the search."""
    with session_scope(database_url) as session:
        old = _workspace(session, ("gmail", None), ("microsoft", NOW - timedelta(seconds=271)))
        fresh = _workspace(session, ("gmail", NOW - timedelta(seconds=269)), ("microsoft", NOW))
        due = refresh.due_mailboxes(session, NOW, 300, [old, fresh])
        assert [(m.workspace_id, m.provider) for m in due] == [
            (old, "gmail"),
            (old, "microsoft"),
        ]
        assert refresh.due_mailboxes(session, NOW, 300, [fresh]) == []
        later = refresh.due_mailboxes(session, NOW + timedelta(seconds=2), 300, [fresh])
        assert [m.provider for m in later] == ["gmail"]


def test_busy_pairs_come_from_active_runs_and_taken_full_sync_slots() -> None:
    """A queued or running sync run blocks the workspace+providers it is tagged with (all
    providers when it names none); a run scheduled beyond the horizon blocks nothing; a
    taken full-sync slot blocks its pair; free slots and other limits block nothing."""
    runs = [
        refresh.ActiveRun("sync_1", [*job_tags("a", ["gmail"], "incremental"), "mailsync"]),
        refresh.ActiveRun("sync_2", ["workspace:b"]),
        refresh.ActiveRun("sync_3", job_tags("c", ["gmail"], "full"), NOW + timedelta(hours=5)),
        refresh.ActiveRun(
            "sync_4", job_tags("d", ["microsoft"], "full"), NOW + timedelta(seconds=60)
        ),
        refresh.ActiveRun("other", ["mailsync", "schedule"]),
    ]
    busy = refresh.busy_from_runs(runs, NOW, timedelta(minutes=5))
    assert set(busy) == {("a", "gmail"), ("b", "*"), ("d", "microsoft")}
    assert "sync_1" in busy[("a", "gmail")]
    limits = [
        ("mailsync-full-sync:a:microsoft", 1),
        ("mailsync-full-sync:ws-x:gmail", 0),
        ("mailsync-on-demand:a", 3),
    ]
    assert refresh.busy_from_limits(limits) == {("a", "microsoft"): "a full sync is in progress"}


def test_read_busy_pages_through_prefect() -> None:
    """Every page of active runs and of concurrency limits is read, not just the first."""

    class FakeClient:
        def read_flow_runs(self, *, limit: int, offset: int, **_: Any) -> list[Any]:
            runs = [
                SimpleNamespace(
                    name=f"r{i}", tags=[f"workspace:w{i}", "provider:gmail"], state=None
                )
                for i in range(5)
            ]
            return runs[offset : offset + limit]

        def read_global_concurrency_limits(self, limit: int, offset: int) -> list[Any]:
            gcls = [SimpleNamespace(name=f"mailsync-full-sync:v{i}:microsoft", active_slots=1)
                    for i in range(3)]  # fmt: skip
            return gcls[offset : offset + limit]

    busy = read_busy(FakeClient(), NOW, timedelta(minutes=5), page=2)
    assert len(busy) == 8 and ("w4", "gmail") in busy and ("v2", "microsoft") in busy


def test_plan_skips_busy_mailboxes_and_groups_the_rest_by_workspace(database_url: str) -> None:
    """Busy pairs (one provider, or the whole workspace) are skipped with their reason; the
    others are grouped one group per workspace."""
    with session_scope(database_url) as session:
        a = _workspace(session, ("gmail", None), ("microsoft", None))
        b = _workspace(session, ("gmail", None), ("microsoft", None))
        c = _workspace(session, ("gmail", None))
        due = refresh.due_mailboxes(session, NOW, 300, [a, b, c])
    busy = {(a, "gmail"): "a full sync is in progress", (c, "*"): "sync x is queued or running"}
    plan = refresh.plan_refresh(due, busy)
    assert {w: [m.provider for m in g] for w, g in plan.groups.items()} == {
        a: ["microsoft"],
        b: ["gmail", "microsoft"],
    }
    assert sorted((s.mailbox.workspace_id, s.mailbox.provider, s.reason) for s in plan.skipped) == (
        sorted([(a, "gmail", busy[(a, "gmail")]), (c, "gmail", busy[(c, "*")])])
    )
    assert plan.mailbox_count == 3


def test_refresh_jobs_are_running_scheduled_jobs_without_quota(database_url: str) -> None:
    """One job per workspace, running, trigger `schedule`, bound to the round's flow run,
    holding no on-demand quota slot nor full-sync lease; the API's view of it works."""
    with session_scope(database_url) as session:
        a = _workspace(session, ("gmail", None), ("microsoft", None))
        plan = refresh.plan_refresh(refresh.due_mailboxes(session, NOW, 300, [a]), {})
        [opened] = refresh.open_refresh_jobs(session, plan, "run-1")
    with session_scope(database_url) as session:
        job = session.get(SyncJob, opened.job_id)
        assert job is not None
        assert (job.status, job.trigger, job.mode, job.flow_run_id) == (
            "running", "schedule", "incremental", "run-1"
        )  # fmt: skip
        assert job.providers == ["gmail", "microsoft"] == list(opened.providers)
        assert job.quota_lease_id is None and job.lease_id is None
        assert [m.provider for m in opened.mailboxes] == ["gmail", "microsoft"]
        assert jobstore.public_view(job)["status"] == "running"


class FakeOrchestrator:
    """Admits full syncs except for the (workspace, provider) pairs in `busy`."""

    def __init__(self, busy: set[tuple[str, str]]) -> None:
        self.busy, self.started = busy, []

    def trigger(
        self, session: Session, workspace_id: str, mode: str, provider: str | None, **kw: Any
    ) -> SyncJob:
        assert mode == "full" and kw["trigger"] == "schedule"
        job = jobstore.build_job(session, workspace_id, mode, provider, trigger=kw["trigger"])
        if any((workspace_id, p) in self.busy for p in job.providers):
            raise SyncInProgressError("busy", job_id="sync_other")
        self.started.append((workspace_id, provider))
        return job


def test_nightly_full_sync_covers_opted_in_workspaces_and_skips_busy_slots(
    database_url: str,
) -> None:
    """Only workspaces with nightly_full_sync on get a full sync, through the sync rules;
    a provider whose slot is taken is skipped (not an error) while the workspace's other
    providers still get theirs; a workspace with no mailbox is skipped."""
    with session_scope(database_url) as session:
        on = _workspace(session, ("gmail", None), ("microsoft", None))
        busy = _workspace(session, ("gmail", None), ("microsoft", None))
        empty = _workspace(session)
        off = _workspace(session, ("gmail", None))
        for w in (on, busy, empty):
            workspaces.update_workspace(session, w, nightly_full_sync=True)
        assert workspaces.update_workspace(session, off).nightly_full_sync is False
        mine = [on, busy, empty, off]
        assert nightly.nightly_workspaces(session, mine) == sorted([on, busy, empty])
        orchestrator = FakeOrchestrator({(busy, "gmail")})
        outcomes = nightly.start_nightly_full_syncs(
            session, orchestrator, nightly.nightly_workspaces(session, mine)
        )
    assert sorted(orchestrator.started) == sorted([(on, None), (busy, "microsoft")])
    skipped = {(o.workspace_id, o.provider) for o in outcomes if o.job_id is None}
    assert skipped == {(busy, "gmail"), (empty, None)}


def test_summary_artifact_names_counts_cursors_and_resets() -> None:
    """The summary's key is a valid Prefect artifact key; the table shows counts, the
    cursors before and after (truncated) and whether the cursor was reset."""
    key = summaries.artifact_key("sync-summary", "sync_01JABCDEFGHJKMNPQRSTVWXYZ0")
    assert re.fullmatch(r"[a-z0-9-]+", key) and key.endswith("01jabcdefghjkmnpqrstvwxyz0")
    result = MailboxResult(
        "mbx_1",
        "microsoft",
        "ada@x",
        "incremental",
        "full",
        reason="cursor_reset",
        counts=Counts(added=7, updated=1, deleted=2),
        cursor_before="https://graph/delta?token=" + "a" * 300,
        cursor_after="12345",
    )
    job = JobRef("sync_1", "ws_1", ("microsoft",), "incremental", ())
    text = summaries.summary_markdown(job, JobEnd("sync_1", (result,)), 2.5)
    assert "| microsoft ada@x | full | cursor_reset | yes | 7 | 1 | 2 |" in text
    assert "`12345`" in text and "a" * 100 not in text and "2.5 s" in text
    assert "12345" not in str(JobEnd("sync_1", (result,)).mailbox_entries())  # no cursors


# -- through the real stack ------------------------------------------------------------------
def _logs(client: SyncPrefectClient, run_id: Any, marker: str, timeout: float = 15) -> str:
    """A run's log text, once it holds `marker` (logs are shipped in batches)."""
    only_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
    return eventually(
        lambda: " ".join(log.message for log in client.read_logs(only_run)),
        f"{marker!r} in the run's logs",
        timeout,
        0.5,
        until=lambda text: marker in text,
    )


@pytest.mark.integration
@pytest.mark.only_database("postgresql")  # the plan is unit-tested on both
def test_refresh_round_syncs_due_mailboxes_and_skips_busy_ones(
    prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """A run of the refresh deployment syncs every due mailbox in jobs with trigger
    `schedule` readable at GET /v1/email/sync/{id}, leaves out a mailbox synced recently,
    one whose full-sync slot is taken and one with a sync queued in Prefect (saying so in
    its log), and takes no on-demand quota slot; a second round started while one runs is
    cancelled by the deployment's concurrency limit, so no mailbox is synced twice at once."""
    settings = prefect_stack.settings
    a, b, c = (make_tenant(settings, fakes) for _ in range(3))
    with session_scope(settings.resolved_database_url) as session:
        recent = session.exec(
            select(Mailbox).where(
                Mailbox.workspace_id == b.workspace_id, Mailbox.provider == "gmail"
            )
        ).one()
        recent.last_synced_at = utcnow()
        session.add(recent)
    with prefect_stack.client() as prefect:
        limits = PrefectLimits(lambda: prefect)
        lease = limits.take([full_sync_limit(a.workspace_id, "gmail")], 60)
        assert isinstance(lease, str)
        sync = prefect.read_deployment_by_name("sync-mailbox/sync")
        queued = prefect.create_flow_run_from_deployment(
            sync.id,
            parameters={"workspace": b.workspace_id, "providers": ["microsoft"]},
            tags=job_tags(b.workspace_id, ["microsoft"], "incremental"),
            state=Scheduled(scheduled_time=utcnow() + timedelta(seconds=240)),
        )
        try:
            deployment = prefect.read_deployment_by_name("refresh-mailboxes/refresh")
            assert all(not s.active for s in deployment.schedules)  # no rounds behind tests
            # Two rounds at once (a slow round overrun by the next): Prefect cancels one.
            rounds = [
                prefect.create_flow_run_from_deployment(
                    deployment.id,
                    parameters={"workspaces": [a.workspace_id, b.workspace_id, c.workspace_id]},
                )
                for _ in range(2)
            ]
            ended = [wait_final(prefect, r.id, 120) for r in rounds]
            assert sorted(r.state.type.value for r in ended) == ["CANCELLED", "COMPLETED"]
            [run] = [r for r in ended if r.state.is_completed()]
            logs = _logs(prefect, run.id, "mailboxes due")
        finally:
            limits.release(lease)
            prefect.delete_flow_run(queued.id)
        on_demand = [limits.active_slots(f"mailsync-on-demand:{t.workspace_id}") for t in (a, b, c)]
    assert on_demand == [0, 0, 0]
    assert f"gmail {a.gmail_address} of {a.workspace_id}: a full sync is in progress" in logs
    assert f"microsoft {b.microsoft_address} of {b.workspace_id}: sync " in logs

    with Session(get_engine(settings.resolved_database_url)) as session:
        jobs = {
            j.workspace_id: j
            for j in session.exec(select(SyncJob).where(SyncJob.flow_run_id == str(run.id)))
        }
        assert set(jobs) == {a.workspace_id, c.workspace_id}
        assert jobs[a.workspace_id].providers == ["microsoft"]
        assert jobs[c.workspace_id].providers == ["gmail", "microsoft"]
        for mailbox in session.exec(
            select(Mailbox).where(Mailbox.workspace_id.in_([a.workspace_id, c.workspace_id]))  # type: ignore[attr-defined]
        ):
            if (mailbox.workspace_id, mailbox.provider) == (a.workspace_id, "gmail"):
                assert mailbox.last_synced_at is None
            else:
                admin = fakes.admin(mailbox.provider)
                assert index.message_ids(session, mailbox.id) == set(admin.ids(mailbox.address))
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        for tenant in (a, c):
            job = jobs[tenant.workspace_id]
            assert (job.trigger, job.quota_lease_id) == ("schedule", None)
            view = api.get(f"/v1/email/sync/{job.id}", headers=tenant.auth()).json()["data"]
            assert view["status"] == "completed", view
            assert view["counts"]["messages_added"] == 40 * len(job.providers)
            assert {m["reason"] for m in view["mailboxes"]} == {"initial_sync"}


def _mailbox(settings: Any, workspace_id: str, provider: str) -> Mailbox:
    with Session(get_engine(settings.resolved_database_url)) as session:
        return session.exec(
            select(Mailbox).where(
                Mailbox.workspace_id == workspace_id, Mailbox.provider == provider
            )
        ).one()


@pytest.mark.integration
@pytest.mark.only_database("sqlite")
def test_a_round_never_syncs_a_mailbox_whose_turn_another_sync_holds(
    prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """A round holds a job's mailbox turns in one lease, all or none: while another sync
    holds one mailbox's turn, the round does not sync that mailbox (it waits for the turn)
    and still syncs the job's other mailbox, which is not held up by it; once the turn is
    given back the waiting mailbox is synced and the round completes."""
    settings = prefect_stack.settings
    tenant = make_tenant(settings, fakes)
    with prefect_stack.client() as prefect:
        deployment = prefect.read_deployment_by_name("refresh-mailboxes/refresh")

        def round_() -> Any:
            return prefect.create_flow_run_from_deployment(
                deployment.id, parameters={"workspaces": [tenant.workspace_id]}
            )

        assert wait_final(prefect, round_().id, 120).state.is_completed()  # the initial syncs
        with session_scope(settings.resolved_database_url) as session:
            for mailbox in session.exec(
                select(Mailbox).where(Mailbox.workspace_id == tenant.workspace_id)
            ):
                assert mailbox.cursor is not None
                mailbox.last_synced_at = utcnow() - timedelta(days=1)
                session.add(mailbox)
        before = {p: _mailbox(settings, tenant.workspace_id, p).last_synced_at for p in PROVIDERS}
        for provider, address in (
            ("gmail", tenant.gmail_address),
            ("microsoft", tenant.microsoft_address),
        ):
            fakes.admin(provider).add_messages(address, 2)
        gmail = _mailbox(settings, tenant.workspace_id, "gmail")
        limits = PrefectLimits(lambda: prefect)
        other_sync = limits.take([mailbox_limit(gmail.id)], 60)
        assert isinstance(other_sync, str)
        try:
            run = round_()
            eventually(
                lambda: (
                    _mailbox(settings, tenant.workspace_id, "microsoft").last_synced_at
                    != before["microsoft"]
                ),
                "the free mailbox synced while the other waits",
            )
            assert (
                _mailbox(settings, tenant.workspace_id, "gmail").last_synced_at == before["gmail"]
            )
            state = prefect.read_flow_run(run.id).state
            assert state is not None and not state.is_final()
        finally:
            limits.release(other_sync)
        assert wait_final(prefect, run.id, 120).state.is_completed()
    with Session(get_engine(settings.resolved_database_url)) as session:
        assert index.message_ids(session, gmail.id) == set(fakes.gmail.ids(tenant.gmail_address))
