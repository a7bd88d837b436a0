"""The retryable unit of a refresh round: one due mailbox, incrementally."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from mailsync import runtime
from tasks.sync_mailbox import is_transient


@task(
    name="refresh-mailbox",
    task_run_name="{provider}:{address}",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def refresh_mailbox(
    job_id: str, mailbox_id: str, provider: str, address: str, turn_held: bool = False
) -> dict[str, Any]:
    """No progress artifact: a round refreshes many mailboxes and most have nothing new.
    `turn_held`: the round holds this mailbox's turn for the job (runtime.RoundTurns)."""
    result = runtime.run_mailbox(mailbox_id, "incremental", turn_held=turn_held)
    return {
        **result.as_dict(),
        "cursor_before": result.cursor_before,
        "cursor_after": result.cursor_after,
    }
