"""The units of a prune round: mailsync's records, its idle Prefect limits, its old flow runs.

Each takes the round's `now` (one clock for the whole round) and retries only what is
transient: Prefect or the database out of reach. Deleting twice is harmless, so a retry is too.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_API_URL

from mailsync.core.retention import Retention, prune_records
from mailsync.orchestration import pruning
from mailsync.settings import get_settings
from tasks.sync_mailbox import is_transient

# Twice, after 10 s then 60 s: a Prefect restart or a database failover, not a bug.
_DELAYS: list[float] = [10.0, 60.0]


def _client() -> SyncPrefectClient:
    # A client built from a URL sends no auth string of its own accord (the API wants one).
    settings = get_settings()
    return SyncPrefectClient(
        PREFECT_API_URL.value() or settings.resolved_prefect_api_url,
        auth_string=settings.prefect_client_auth_string(),
    )


@task(
    name="prune-records",
    retries=2,
    retry_delay_seconds=_DELAYS,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def prune_app_records(now: datetime) -> dict[str, int]:
    """Jobs, webhook events, deliveries, attempts and Idempotency-Key records past retention."""
    settings = get_settings()
    counts = prune_records(
        settings.resolved_database_url, now, Retention.from_settings(settings).records
    )
    get_run_logger().info("pruned records: %s", asdict(counts))
    return asdict(counts)


@task(
    name="prune-limits",
    retries=2,
    retry_delay_seconds=_DELAYS,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def prune_idle_limits(now: datetime) -> list[str]:
    """Per-workspace, per-mailbox and legacy per-key/per-address limits nobody used or holds."""
    idle = Retention.from_settings(get_settings()).limit_idle
    with _client() as client:
        deleted = pruning.prune_limits(client, now, idle)
    get_run_logger().info("deleted %d idle Prefect limits", len(deleted))
    return deleted


@task(
    name="prune-flow-runs",
    retries=2,
    retry_delay_seconds=_DELAYS,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def prune_old_flow_runs(now: datetime) -> int:
    """Terminal flow runs of mailsync's deployments past retention, with logs and artifacts."""
    retention = Retention.from_settings(get_settings()).records
    with _client() as client:
        deleted = pruning.prune_flow_runs(client, now, retention)
    get_run_logger().info("deleted %d old flow runs", deleted)
    return deleted
