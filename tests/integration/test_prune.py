"""Pruning against a real Prefect server: old terminal runs and idle limits go, the rest stays.

The age decisions run on an injected clock set between two objects' own server timestamps,
so one is old and the other young without waiting. Deleting by age would also take the
shared stack's objects of earlier tests, so the clocked parts use a Prefect server of their
own (deployments registered, no worker); the flow itself runs on the shared stack, on the
real clock, where nothing is old enough to go.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import (
    ArtifactCreate,
    GlobalConcurrencyLimitCreate,
    LogCreate,
)
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, Running, Scheduled

from mailsync.core.retention import LimitView
from mailsync.core.rules.admission import mailbox_limit
from mailsync.core.rules.slots import LimitSpec, Refusal
from mailsync.db.tables import new_id, utcnow
from mailsync.orchestration import pruning
from mailsync.orchestration.limits import PrefectLimits
from mailsync.orchestration.orchestrator import SYNC_DEPLOYMENT
from tests.support.bare_prefect import BareServer, prefect_server
from tests.support.stack import PrefectStack
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.only_database("sqlite")]
# The tests on own_prefect in one xdist group, so they share its server (~30 s to start)
# instead of one per worker; not module-wide: xdist would join it to the database group of
# the test on the shared stack (tests/conftest.py), and that stack would start twice.
on_own_prefect = pytest.mark.xdist_group("prune")
IDLE = timedelta(hours=24)
KEEP = timedelta(days=30)


@pytest.fixture(scope="module")
def own_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BareServer]:
    """A Prefect server of this module's own, mailsync's deployments registered, no worker."""
    with prefect_server(tmp_path_factory.mktemp("prefect-prune"), deployments=True) as server:
        yield server


def _view(client: SyncPrefectClient, name: str) -> LimitView:
    [view] = [v for v in pruning.read_limits(client) if v.name == name]
    return view


def _exists(client: SyncPrefectClient, name: str) -> bool:
    try:
        client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        return False
    return True


def _between(first: datetime, second: datetime) -> datetime:
    assert second > first, (first, second)
    return first + (second - first) / 2


@on_own_prefect
def test_idle_unheld_limits_go_and_held_young_or_foreign_ones_stay(own_prefect: BareServer) -> None:
    """Of the limits idle past the clock, a per-mailbox one and a legacy per-key rate limit
    nobody holds are deleted (a take or release counts as a use); a per-mailbox one whose
    slot is held stays and still refuses a second taker; one used after the cutoff stays;
    another project's stays. A taker of a deleted limit gets it created again."""
    with own_prefect.client() as client:
        limits = PrefectLimits(lambda: client)
        idle, held, young = (mailbox_limit(new_id("mbx")) for _ in range(3))
        legacy = f"mailsync-requests:key:{new_id('key')}"
        foreign = f"billing-exports-{new_id('x')}"
        # As older versions made them: a rate limit of 600 a minute (slots decay).
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=legacy, limit=600, slot_decay_per_second=10.0)
        )
        client.upsert_global_concurrency_limit_by_name(foreign, 1)
        limits.ensure([idle])
        created = _view(client, idle.name).updated
        lease = limits.take([idle], 60)
        assert isinstance(lease, str)
        limits.release(lease)  # used once, then left: the limit stays cached in `limits`
        assert _view(client, idle.name).updated > created  # a take or release is a use
        holder = limits.take([held], 600)
        assert isinstance(holder, str)
        cutoff_after = max(
            _view(client, n).updated for n in (idle.name, held.name, legacy, foreign)
        )
        young_lease = limits.take([young], 60)
        assert isinstance(young_lease, str)
        limits.release(young_lease)
        cutoff = _between(cutoff_after, _view(client, young.name).updated)

        deleted = pruning.prune_limits(client, cutoff + IDLE, IDLE)

        assert sorted(deleted) == sorted([idle.name, legacy])
        assert not _exists(client, idle.name) and not _exists(client, legacy)
        for kept in (held.name, young.name, foreign):
            assert _exists(client, kept), kept
        assert _view(client, held.name).active_slots == 1
        assert isinstance(limits.take([held], 60), Refusal)  # still enforced for its holder
        assert limits.renew(holder, 600)
        limits.release(holder)

        # Its next user creates the deleted limit again, though `limits` remembered it.
        again = limits.take([idle], 60)
        assert isinstance(again, str) and _view(client, idle.name).active_slots == 1
        limits.release(again)


@on_own_prefect
def test_a_limit_taken_after_it_was_listed_is_not_deleted_under_its_holder(
    own_prefect: BareServer,
) -> None:
    """The race: the pruner listed a limit free and idle, then a sync took its slot before
    the delete. The pruner's own take of every slot is refused, so the limit stays with its
    holder, and a second sync is still refused its slot."""
    with own_prefect.client() as client:
        limits = PrefectLimits(lambda: client)
        spec = mailbox_limit(new_id("mbx"))
        limits.ensure([spec])
        listed = _view(client, spec.name)  # free: what the pruner decided on
        holder = limits.take([spec], 600)
        assert isinstance(holder, str)

        deleted = pruning.delete_if_unheld(client, listed)

        second = limits.take([spec], 60)
        assert isinstance(second, Refusal), "a second sync got the mailbox's slot"
        assert deleted is False
        assert _exists(client, spec.name) and _view(client, spec.name).active_slots == 1
        assert limits.renew(holder, 600)
        limits.release(holder)


@on_own_prefect
def test_a_rate_limit_whose_slots_decay_while_the_pruner_holds_them_is_deleted(
    own_prefect: BareServer,
) -> None:
    """Prefect reports a rate limit's slots net of their decay, so the pruner's own take of
    every slot reads back fewer than it took a moment later (how slow the machine is sets how
    many fewer). Nobody else holds a rate limit's slots: it is deleted all the same."""
    with own_prefect.client() as client:
        name = f"mailsync-requests:key:{new_id('key')}"
        # Decaying fast enough that any read after the take sees slots gone.
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=600, slot_decay_per_second=1e6)
        )
        listed = _view(client, name)

        assert pruning.delete_if_unheld(client, listed) is True
        assert not _exists(client, name)


@on_own_prefect
def test_a_limit_resized_while_the_pruner_holds_it_is_not_deleted(own_prefect: BareServer) -> None:
    """A limit made bigger (a new MAILSYNC_SYNC_QUOTA) after the pruner took all its slots
    may have a holder of the new slot: the pruner leaves it, and gives its own slots back."""
    with own_prefect.client() as client:
        spec = LimitSpec(f"mailsync-on-demand:{new_id('ws').lower()}", 2)
        limits = PrefectLimits(lambda: client)
        limits.ensure([spec])
        listed = _view(client, spec.name)
        real_read = client.read_global_concurrency_limit_by_name

        def resized_meanwhile(name: str):  # type: ignore[no-untyped-def]
            # Once, between the pruner's take and its check: then Prefect's own read again.
            client.read_global_concurrency_limit_by_name = real_read  # type: ignore[method-assign]
            client.upsert_global_concurrency_limit_by_name(name, 3)
            taken = limits.take([LimitSpec(name, 3)], 60)
            assert isinstance(taken, str)
            return real_read(name)

        client.read_global_concurrency_limit_by_name = resized_meanwhile  # type: ignore[method-assign]
        try:
            assert pruning.delete_if_unheld(client, listed) is False
        finally:
            client.read_global_concurrency_limit_by_name = real_read  # type: ignore[method-assign]
        assert _exists(client, spec.name) and _view(client, spec.name).active_slots == 1


@flow(name="not-mailsync")
def _foreign_flow() -> None:
    """A flow of another project on the same Prefect (never run: its runs are made by hand)."""


def _ended(client: SyncPrefectClient, run_id: UUID) -> FlowRun:
    client.set_flow_run_state(run_id, Running(), force=True)
    client.set_flow_run_state(run_id, Completed(), force=True)
    run = client.read_flow_run(run_id)
    assert run.end_time is not None
    return run


@on_own_prefect
def test_old_terminal_runs_of_mailsync_go_with_their_logs_and_artifacts(
    own_prefect: BareServer,
) -> None:
    """A completed sync run that ended before the cutoff is deleted, and its logs and
    artifacts with it; a run that ended after the cutoff, a run still running, and another
    project's completed run as old as the first all stay."""
    with own_prefect.client() as client:
        deployment = client.read_deployment_by_name(SYNC_DEPLOYMENT)
        later = Scheduled(scheduled_time=utcnow() + timedelta(days=1))

        def sync_run() -> UUID:
            return client.create_flow_run_from_deployment(deployment.id, state=later).id

        running, old, young = sync_run(), sync_run(), sync_run()
        client.set_flow_run_state(running, Running(), force=True)
        foreign = _ended(client, client.create_flow_run(_foreign_flow, state=later).id)
        ended_old = _ended(client, old)
        client.create_logs(
            [
                LogCreate(
                    name="mailsync",
                    level=20,
                    message="synced",
                    timestamp=utcnow(),
                    flow_run_id=old,
                )
            ]
        )
        client.create_artifact(
            ArtifactCreate(
                key=f"sync-summary-{new_id('sync').lower().replace('_', '-')}",
                type="markdown",
                data="# done",
                flow_run_id=old,
            )
        )
        assert client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[old])))
        ended_young = _ended(client, young)
        assert ended_old.end_time and ended_young.end_time and foreign.end_time
        cutoff = _between(max(ended_old.end_time, foreign.end_time), ended_young.end_time)

        assert pruning.prune_flow_runs(client, cutoff + KEEP, KEEP) == 1

        with pytest.raises(ObjectNotFound):
            client.read_flow_run(old)
        for kept in (young, running, foreign.id):
            assert client.read_flow_run(kept).id == kept
        assert not client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[old]))
        )
        # Prefect deletes a deleted run's logs in the background.
        eventually(
            lambda: not client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[old]))),
            "the deleted run's logs gone",
        )
        assert pruning.prune_flow_runs(client, cutoff + KEEP, KEEP) == 0


def test_the_prune_deployment_runs_and_keeps_what_is_young(prefect_stack: PrefectStack) -> None:
    """A run of `prune/prune` on the shared stack completes, its three tasks reporting,
    and on the real clock takes nothing a test just made."""
    with prefect_stack.client() as client:
        limits = PrefectLimits(lambda: client)
        spec = mailbox_limit(new_id("mbx"))
        limits.ensure([spec])
        deployment = client.read_deployment_by_name("prune/prune")
        run = client.create_flow_run_from_deployment(deployment.id)

        def ended() -> FlowRun | None:
            current = client.read_flow_run(run.id)
            return current if current.state and current.state.is_final() else None

        final = eventually(ended, "the prune run's end", timeout=300)
        assert final.state is not None and final.state.is_completed(), final.state

        def completed_tasks() -> list[str] | None:
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )
            names = sorted(
                t.name.rsplit("-", 1)[0] for t in tasks if t.state and t.state.is_completed()
            )
            return names if len(names) == 3 else None

        # Prefect records task runs from their events, after the flow run's own end.
        names = eventually(completed_tasks, "the prune run's three completed tasks")
        assert names == ["prune-flow-runs", "prune-limits", "prune-records"]
        assert _exists(client, spec.name)  # created by this test, minutes from idle
