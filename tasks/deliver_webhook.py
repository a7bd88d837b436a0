"""The unit of webhook delivery: one attempt at one delivery.

No Prefect retries: a failed attempt is rescheduled in the delivery row (next_attempt_at),
which outlives any run over the 24 h retry horizon.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from mailsync.webhooks import dispatch


@task(name="deliver-webhook", task_run_name="{delivery_id}", cache_policy=NO_CACHE)
def deliver_webhook(delivery_id: str) -> dict[str, Any]:
    return dispatch.deliver_one(delivery_id)
