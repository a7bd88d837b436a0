"""Delivers every due webhook delivery, then arranges the run that makes the next retries.

Runs of the `deliver-webhooks/deliver` deployment start right after a sync job ends, every
60 s from the deployment's schedule (which finds what a crash left behind), and at the next
retry time when this run leaves retries pending. Attempts run in parallel, one task each, in
lanes per endpoint and workspace (mailsync/webhooks/lanes.py): a slow receiver holds only its
own lanes, and new events are picked up while attempts are in flight. Retries due soon are
made in this run (polling) rather than by starting another process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture

from mailsync.orchestration import runs
from mailsync.settings import get_settings
from mailsync.webhooks import lanes
from tasks.deliver_webhook import deliver_webhook


@flow(name="deliver-webhooks")
def deliver_webhooks(
    linger_seconds: float = 30.0, max_run_seconds: float = 300.0
) -> dict[str, Any]:
    futures: list[PrefectFuture[dict[str, Any]]] = []

    def start(delivery_id: str, done: Callable[[], None]) -> None:
        # A failed task keeps its claim until it lapses, so the pump cannot spin on it.
        future = deliver_webhook.submit(delivery_id)
        future.add_done_callback(lambda _: done())
        futures.append(future)

    next_at = lanes.pump(
        get_settings(), start, linger_seconds=linger_seconds, max_run_seconds=max_run_seconds
    )
    if next_at is not None:
        runs.schedule_delivery_run(next_at)
    results = [f.result(raise_on_failure=False) for f in futures]
    sent = [r for r in results if isinstance(r, dict) and r.get("status") != "skipped"]
    return {
        "attempts": len(sent),
        "delivered": sum(1 for o in sent if o.get("status") == "delivered"),
    }
