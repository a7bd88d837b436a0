"""The nightly full sync: which workspaces get one, started through the sync rules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from sqlmodel import Session, col, select

from mailsync.core.jobs import store as jobstore
from mailsync.db.tables import SyncJob, Workspace
from mailsync.errors import NoMailboxError, SyncInProgressError


def nightly_workspaces(session: Session, workspaces: Iterable[str] | None = None) -> list[str]:
    """Workspaces opted in to the nightly full sync (optionally only among `workspaces`)."""
    query = select(Workspace.id).where(col(Workspace.nightly_full_sync).is_(True))
    if workspaces is not None:
        query = query.where(col(Workspace.id).in_(list(workspaces)))
    return list(session.exec(query.order_by(col(Workspace.id))))


class Trigger(Protocol):
    def trigger(
        self,
        session: Session,
        workspace_id: str,
        mode: str,
        provider: str | None,
        *,
        trigger: str = ...,
    ) -> SyncJob: ...


@dataclass(frozen=True)
class NightlyOutcome:
    workspace_id: str
    provider: str | None  # None: all of the workspace's providers in one job
    job_id: str | None  # None: skipped
    reason: str | None = None


def start_nightly_full_syncs(
    session: Session, orchestrator: Trigger, workspace_ids: Iterable[str]
) -> list[NightlyOutcome]:
    """Start one full sync per workspace through the sync rules (it takes the full-sync slot).

    When a provider's slot is taken, the workspace's other providers are synced in jobs of
    their own and the busy one is skipped: a skip, not an error.
    """
    outcomes: list[NightlyOutcome] = []
    for workspace_id in workspace_ids:
        try:
            job = orchestrator.trigger(session, workspace_id, "full", None, trigger="schedule")
            outcomes.append(NightlyOutcome(workspace_id, None, job.id))
            continue
        except NoMailboxError as exc:
            outcomes.append(NightlyOutcome(workspace_id, None, None, str(exc)))
            continue
        except SyncInProgressError:
            pass
        providers = sorted(
            {m.provider for m in jobstore.connected_mailboxes(session, workspace_id, None)}
        )
        for provider in providers:
            try:
                job = orchestrator.trigger(
                    session, workspace_id, "full", provider, trigger="schedule"
                )
                outcomes.append(NightlyOutcome(workspace_id, provider, job.id))
            except SyncInProgressError as exc:
                outcomes.append(NightlyOutcome(workspace_id, provider, None, str(exc)))
    return outcomes
