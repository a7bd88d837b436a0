"""The units of webhook delivery: one attempt at one delivery; a job's event from its run.

No Prefect retries: a failed attempt is rescheduled in the delivery row (next_attempt_at),
which outlives any run over the 24 h retry horizon.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from mailsync.orchestration import runs
from mailsync.webhooks import dispatch


@task(name="deliver-webhook", task_run_name="{delivery_id}", cache_policy=NO_CACHE)
def deliver_webhook(delivery_id: str) -> dict[str, Any]:
    return dispatch.deliver_one(delivery_id)


@task(name="deliver-job-event", cache_policy=NO_CACHE)
def deliver_job_event(job_id: str) -> list[dict[str, Any]]:
    """Right after the job's end, from its own run (dispatch.deliver_after_job), then a
    delivery run for what is left, if anything; never raises."""
    outcomes = dispatch.deliver_after_job(job_id)
    try:
        pending = dispatch.job_has_deliveries(job_id)
    except Exception:
        pending = True  # the delivery run finds out; its start never raises either
    if pending:
        runs.start_delivery_run(f"after:{job_id}")
    return outcomes
