"""The nightly full sync: one full-sync job per opted-in workspace, through the sync rules.

Each job is a run of the `sync-mailbox/sync` deployment that took its workspace+provider
full-sync slot, exactly as an API request does (without the on-demand quota). A workspace
whose slot is taken is skipped and logged, not failed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.settings import PREFECT_API_URL

from mailsync.core.schedule import nightly
from mailsync.db import session_scope
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import get_settings


@flow(name="nightly-full-sync", log_prints=True)
def nightly_full_sync(workspaces: list[str] | None = None) -> dict[str, Any]:
    """Start a full sync of every workspace with `nightly_full_sync` on (optionally only
    among `workspaces`)."""
    logger = get_run_logger()
    settings = get_settings()
    api_url = PREFECT_API_URL.value() or settings.resolved_prefect_api_url
    orchestrator = Orchestrator(api_url, settings)
    try:
        with session_scope(settings.resolved_database_url) as session:
            opted_in = nightly.nightly_workspaces(session, workspaces)
            outcomes = nightly.start_nightly_full_syncs(session, orchestrator, opted_in)
    finally:
        orchestrator.close()
    for o in outcomes:
        what = f"{o.workspace_id}" + (f" ({o.provider})" if o.provider else "")
        if o.job_id:
            logger.info("started full sync %s of %s", o.job_id, what)
        else:
            logger.info("skipped %s: %s", what, o.reason)
    return {
        "started": [o.job_id for o in outcomes if o.job_id],
        "skipped": [
            {"workspace": o.workspace_id, "provider": o.provider, "reason": o.reason}
            for o in outcomes
            if not o.job_id
        ],
    }
