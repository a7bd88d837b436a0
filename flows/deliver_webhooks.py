"""Delivers every due webhook delivery, then arranges the run that makes the next retries.

Runs of the `deliver-webhooks/deliver` deployment start right after a sync job ends, every
60 s from the deployment's schedule (which finds what a crash left behind), and at the next
retry time when this run leaves retries pending. Retries due soon are made in this run
(polling, so that new events are picked up too) rather than by starting another process.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from mailsync.db.tables import utcnow
from mailsync.orchestration import runs
from mailsync.webhooks import dispatch
from tasks.deliver_webhook import deliver_webhook


@flow(name="deliver-webhooks")
def deliver_webhooks(
    linger_seconds: float = 30.0, max_run_seconds: float = 300.0
) -> dict[str, Any]:
    started = time.monotonic()
    outcomes: list[dict[str, Any]] = []
    while True:
        due = dispatch.due_deliveries()
        if due:
            # A failed task keeps its claim until it lapses, so this cannot spin on it.
            results = deliver_webhook.map(due).result(raise_on_failure=False)
            outcomes.extend(r for r in results if isinstance(r, dict))
            if time.monotonic() - started <= max_run_seconds:
                continue
        next_at = dispatch.next_due_at()
        if next_at is None:
            break
        wait = (next_at - utcnow()).total_seconds()
        if wait > linger_seconds or time.monotonic() - started > max_run_seconds:
            runs.schedule_delivery_run(next_at)
            break
        time.sleep(min(max(wait, 0.05), 2.0))
    sent = [o for o in outcomes if o.get("status") != "skipped"]
    return {
        "attempts": len(sent),
        "delivered": sum(1 for o in sent if o.get("status") == "delivered"),
    }
