"""Gmail quota use: a paced full sync against a fake enforcing the per-user quota.

Gmail allows 15,000 units per user per minute (messages.list and messages.get cost 5 units,
getProfile 1). Time is scaled so that the run takes a minute or two: the fake enforces
15,000 units per 10 s window (6x Gmail's rate, still about a third of what client and fake
manage unpaced, so the quota is what limits the sync) and the sync paces to the same quota
and window. Reported: the achieved rate as a share of the quota ceiling, the fake's
refusals, and failed syncs (must be 0). The sync is the unit a job runs
(`mailsync.core.sync.engine.sync_mailbox`, SQLite index), in a fresh process.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import harness
from mailsync.fakes.client import GmailAdmin
from mailsync.providers.base import ProviderEndpoints, ProviderOptions

UNITS, WINDOW_S = 15_000, 10.0
SIZES = {"tiny": [300], "small": [5_000], "full": [20_000]}


def _paced_full_sync(
    endpoints: ProviderEndpoints, address: str, credentials: dict[str, Any]
) -> dict[str, Any]:
    options = ProviderOptions(
        gmail_quota_units_per_minute=UNITS, gmail_quota_window_seconds=WINDOW_S
    )
    return harness.timed_full_sync(endpoints, "gmail", address, credentials, options)


def run(size: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    gmail = {"quota_units_per_minute": UNITS, "quota_window_seconds": WINDOW_S}
    with (
        tempfile.TemporaryDirectory() as workdir,
        harness.running_fakes(Path(workdir), gmail=gmail) as fakes,
        GmailAdmin(fakes.gmail_url, fakes.ca_path, timeout=600) as admin,
    ):
        for count in SIZES[size]:
            address = f"quota-{count}@gmail.example"
            account = admin.create_mailbox(address, count)
            outcome = harness.in_fresh_process(
                _paced_full_sync,
                harness.endpoints(fakes),
                address,
                account.provider_credentials(),
            )
            usage = admin.quota(address)
            ceiling = UNITS / WINDOW_S  # units per second
            rows.append(
                {
                    "messages": count,
                    "synced": outcome["messages"],
                    "seconds": outcome["seconds"],
                    "units charged": usage.charged_total,
                    "units/s": usage.charged_total / outcome["seconds"],
                    "ceiling units/s": ceiling,
                    "share of ceiling": usage.charged_total / outcome["seconds"] / ceiling,
                    "refused calls": usage.rejected,
                    "failed syncs": int(outcome["failed"] is not None),
                }
            )
    return rows
