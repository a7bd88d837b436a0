"""The daily prune: what mailsync keeps stays bounded (MAILSYNC_RETENTION_DAYS, limits idle).

Runs of the `prune/prune` deployment (prefect.yaml, daily). Three independent tasks on one
clock: the app database's old records, the idle per-workspace/per-mailbox Prefect limits, the
old terminal flow runs of mailsync's deployments. One failing leaves the others to finish;
the round fails then, and the next day's catches up (nothing is lost by pruning late).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, wait

from mailsync.db.tables import utcnow
from tasks.prune import prune_app_records, prune_idle_limits, prune_old_flow_runs


@flow(name="prune", log_prints=True)
def prune() -> dict[str, Any]:
    now = utcnow()
    records = prune_app_records.submit(now)
    limits = prune_idle_limits.submit(now)
    runs = prune_old_flow_runs.submit(now)
    futures: list[PrefectFuture[Any]] = [records, limits, runs]
    wait(futures)  # all three end before a failure of one fails the round
    deleted_limits, deleted_runs = limits.result(), runs.result()
    get_run_logger().info(
        "pruned as of %s: %s, %d idle limits, %d flow runs",
        now.isoformat(),
        records.result(),
        len(deleted_limits),
        deleted_runs,
    )
    return {"records": records.result(), "limits": deleted_limits, "flow_runs": deleted_runs}
