"""What a refresh round asks Prefect: which workspace+provider pairs have a sync in progress.

The round's decisions themselves (which mailboxes are due, the plan, the batches) are plain
values in mailsync/core/schedule/refresh.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from mailsync.core.schedule.refresh import (
    SYNC_FLOW,
    ActiveRun,
    Busy,
    busy_from_limits,
    busy_from_runs,
)


def read_busy(client: Any, now: datetime, horizon: timedelta, page: int = 200) -> Busy:
    """Ask Prefect which workspace+provider pairs have a sync in progress (two listings).

    `client` is a SyncPrefectClient (or anything with its read_flow_runs and
    read_global_concurrency_limits).
    """
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    active = [
        StateType.SCHEDULED,
        StateType.PENDING,
        StateType.RUNNING,
        StateType.PAUSED,
        StateType.CANCELLING,
    ]
    runs: list[ActiveRun] = []
    offset = 0
    while True:
        batch = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[SYNC_FLOW])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active))
            ),
            limit=page,
            offset=offset,
        )
        for run in batch:
            waiting = run.state is not None and run.state.type == StateType.SCHEDULED
            scheduled = run.state.state_details.scheduled_time if waiting else None
            runs.append(ActiveRun(run.name, list(run.tags), scheduled))
        if len(batch) < page:
            break
        offset += page
    limits: list[tuple[str, int]] = []
    offset = 0
    while True:
        gcls = client.read_global_concurrency_limits(limit=page, offset=offset)
        limits.extend((g.name, int(g.active_slots)) for g in gcls)
        if len(gcls) < page:
            break
        offset += page
    # A taken full-sync slot is the stronger reason; it wins where both apply.
    return {**busy_from_runs(runs, now, horizon), **busy_from_limits(limits)}
