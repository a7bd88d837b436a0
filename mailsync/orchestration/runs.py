"""Starting flow runs of our deployments: one function for sync and webhook-delivery runs.

A run is always created from its deployment with an idempotency key, so a retried start
(an answer lost on the way back) gets the same run instead of a second one. Delivery runs
never block or fail their caller: when Prefect cannot be reached, the delivery deployment's
60 s schedule finds the pending deliveries anyway.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.states import Scheduled

from mailsync.db.tables import utcnow
from mailsync.orchestration.boundary import prefect_calls

log = logging.getLogger(__name__)

DELIVER_DEPLOYMENT = "deliver-webhooks/deliver"


def start_run(
    client: SyncPrefectClient,
    deployment: UUID | str,
    *,
    key: str,
    parameters: dict[str, Any] | None = None,
    name: str | None = None,
    tags: list[str] | None = None,
    at: datetime | None = None,
) -> FlowRun:
    """A flow run of `deployment` (its id, or "flow/deployment"), now or scheduled `at`.

    Raises PrefectUnavailableError when Prefect cannot be reached or the deployment is not
    registered."""
    with prefect_calls(missing=f"the deployment {deployment} is not registered"):
        if isinstance(deployment, str):
            deployment = client.read_deployment_by_name(deployment).id
        return client.create_flow_run_from_deployment(
            deployment,
            parameters=parameters or {},
            name=name,
            tags=tags,
            idempotency_key=key,
            state=Scheduled(scheduled_time=at) if at is not None else None,
        )


def start_delivery_run(key: str, *, client: SyncPrefectClient | None = None) -> bool:
    """A webhook delivery run now (through `client`, or one of this process); never raises."""
    try:
        if client is not None:
            start_run(client, DELIVER_DEPLOYMENT, key=f"deliver-webhooks:{key}")
        else:
            with get_client(sync_client=True) as own:
                start_run(own, DELIVER_DEPLOYMENT, key=f"deliver-webhooks:{key}")
        return True
    except Exception:
        log.warning("could not start a webhook delivery run; the schedule will", exc_info=True)
        return False


def schedule_delivery_run(at: datetime) -> None:
    """A delivery run at `at` (to the second): runs racing to schedule the same retry time
    share the idempotency key, so they make one run."""
    at = max(at, utcnow()).replace(microsecond=0) + timedelta(seconds=1)
    with get_client(sync_client=True) as client:
        start_run(client, DELIVER_DEPLOYMENT, key=f"deliver-webhooks@{at:%Y%m%dT%H%M%S}", at=at)
