"""What the `prune` flow deletes in Prefect: idle per-workspace/mailbox limits, old flow runs.

The decisions are core/retention.py's; this module asks Prefect and deletes. A limit is never
deleted under a holder: the pruner first takes every slot of it in one all-or-nothing take
(refused while anyone holds one, and refusing everyone while the pruner holds them), checks
that nobody resized it meanwhile, deletes it by id (never a namesake created since) and gives
its own lease back. A taker that finds the limit gone creates it again (limits.PrefectLimits).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterTags,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from mailsync.core.retention import (
    TERMINAL_RUN_STATES,
    LimitView,
    Retention,
    flow_run_is_prunable,
    prunable_limits,
)
from mailsync.errors import PrefectUnavailableError

log = logging.getLogger(__name__)

# Every deployment prefect.yaml declares carries this tag (tests/deployments check): the
# runs pruned are theirs, never another project's on a shared Prefect server.
MAILSYNC_TAG = "mailsync"
# Prefect's shortest lease: the pruner's hold on a limit ends by itself if it dies.
_HOLD_SECONDS = 60
_PAGE = 200
_NEVER = datetime.max.replace(tzinfo=UTC)  # no timestamp: never old enough


def _status(exc: Exception) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def read_limits(client: SyncPrefectClient) -> list[LimitView]:
    views: list[LimitView] = []
    offset = 0
    while True:
        page = client.read_global_concurrency_limits(limit=_PAGE, offset=offset)
        views.extend(
            LimitView(
                id=str(g.id),
                name=g.name,
                limit=int(g.limit),
                active_slots=int(g.active_slots),
                active=bool(g.active),
                updated=g.updated or g.created or _NEVER,
            )
            for g in page
        )
        if len(page) < _PAGE:
            return views
        offset += _PAGE


def _release(client: SyncPrefectClient, lease_id: str) -> None:
    try:
        client.release_concurrency_slots_with_lease(UUID(lease_id))
    except (PrefectHTTPStatusError, ObjectNotFound, httpx.HTTPError):
        log.warning("could not give back the pruner's lease %s; it expires by itself", lease_id)


def _held_by_others(current: GlobalConcurrencyLimitResponse, ours: int) -> bool:
    """Whether slots beyond the pruner's own are taken. Prefect reports a rate limit's
    slots net of their decay, so there the pruner's own read back as fewer than it took."""
    if (current.slot_decay_per_second or 0) > 0:
        return current.active_slots > ours
    return current.active_slots != ours


def delete_if_unheld(client: SyncPrefectClient, limit: LimitView) -> bool:
    """Delete the limit if, and only if, the pruner could hold every one of its slots."""
    try:
        response = client.increment_concurrency_slots_with_lease(
            [limit.name], limit.limit, "concurrency", _HOLD_SECONDS
        )
    except PrefectHTTPStatusError as exc:
        if _status(exc) in (422, 423):  # someone holds a slot, or it was made smaller
            return False
        raise
    body: dict[str, Any] = response.json()
    lease_id = str(body["lease_id"])
    try:
        held = body.get("limits") or []
        if [str(h.get("id")) for h in held] != [limit.id]:
            return False  # gone, or created again since it was listed
        current = client.read_global_concurrency_limit_by_name(limit.name)
        same = str(current.id) == limit.id and current.limit == limit.limit
        if not same or _held_by_others(current, limit.limit):
            return False  # resized since: a slot of the new size may have a holder
        # The endpoint takes an id or a name: by id, so a namesake is never deleted.
        client.delete_global_concurrency_limit_by_name(limit.id)
        return True
    except ObjectNotFound:
        return False
    finally:
        _release(client, lease_id)


def prune_limits(client: SyncPrefectClient, now: datetime, idle: timedelta) -> list[str]:
    """Delete the idle limits mailsync created per workspace, mailbox, key or address that
    nobody holds; returns their names."""
    deleted = []
    try:
        for limit in prunable_limits(read_limits(client), now, idle):
            if delete_if_unheld(client, limit):
                deleted.append(limit.name)
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        raise PrefectUnavailableError("Prefect refused a limit's pruning") from exc
    return deleted


def _old_runs_filter(cutoff: datetime) -> dict[str, Any]:
    return {
        "flow_run_filter": FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType(s) for s in TERMINAL_RUN_STATES])
            ),
            end_time=FlowRunFilterEndTime.model_validate({"before_": cutoff}),  # Prefect's DateTime
        ),
        "deployment_filter": DeploymentFilter(tags=DeploymentFilterTags(all_=[MAILSYNC_TAG])),
    }


def _delete_artifacts(client: SyncPrefectClient, run_ids: list[UUID]) -> None:
    """A run's artifacts (the sync summaries, progress) outlive it otherwise; its logs go
    with it (Prefect deletes them in the background once the run is deleted)."""
    while artifacts := client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids)),
        limit=_PAGE,
    ):
        for artifact in artifacts:
            with contextlib.suppress(ObjectNotFound):
                client.delete_artifact(artifact.id)
        if len(artifacts) < _PAGE:
            return


def prune_flow_runs(client: SyncPrefectClient, now: datetime, retention: timedelta) -> int:
    """Delete the terminal flow runs of mailsync's deployments that ended over `retention`
    ago, with their artifacts; returns how many went."""
    cutoff = now - retention
    deleted, kept = 0, 0  # kept: listed but not deleted, so the next page starts past them
    seen: set[UUID] = set()
    try:
        while page := client.read_flow_runs(**_old_runs_filter(cutoff), limit=_PAGE, offset=kept):
            runs = [
                r
                for r in page
                if r.id not in seen
                and r.deployment_id is not None
                and flow_run_is_prunable(
                    r.state.type.value if r.state else None, r.end_time, now, retention
                )
            ]
            kept += len(page) - len(runs)
            seen.update(r.id for r in runs)
            if runs:
                _delete_artifacts(client, [r.id for r in runs])
            for run in runs:
                try:
                    client.delete_flow_run(run.id)
                    deleted += 1
                except ObjectNotFound:
                    pass
            if len(page) < _PAGE:
                break
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        raise PrefectUnavailableError("Prefect refused a flow run's pruning") from exc
    return deleted


def prune_prefect(
    api_url: str, auth_string: str | None, now: datetime, retention: Retention
) -> tuple[list[str], int]:
    """Both of Prefect's prunes with one client: (limits deleted, flow runs deleted)."""
    with SyncPrefectClient(api_url, auth_string=auth_string) as client:
        return (
            prune_limits(client, now, retention.limit_idle),
            prune_flow_runs(client, now, retention.records),
        )
