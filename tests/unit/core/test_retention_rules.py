"""The age rules of pruning on a fixed clock: which limits and flow runs are past retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailsync.core.retention import (
    LimitView,
    Retention,
    flow_run_is_prunable,
    limit_is_prunable,
    prunable_limits,
)
from mailsync.core.rules.admission import full_sync_limit, mailbox_limit
from mailsync.settings import Settings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
IDLE = timedelta(hours=24)


def _limit(
    name: str, *, idle_for: timedelta = IDLE, slots: int = 0, active: bool = True
) -> LimitView:
    return LimitView("id-" + name, name, 1, slots, active, NOW - idle_for)


def test_retention_comes_from_the_settings() -> None:
    """MAILSYNC_RETENTION_DAYS (30) and MAILSYNC_LIMIT_IDLE_HOURS (24) are the two ages."""
    assert Retention.from_settings(Settings()) == Retention(timedelta(days=30), timedelta(hours=24))
    custom = Settings(retention_days=7, limit_idle_hours=1.5)
    assert Retention.from_settings(custom) == Retention(timedelta(days=7), timedelta(hours=1.5))


@pytest.mark.parametrize(
    "name",
    [
        mailbox_limit("mbx_01").name,
        full_sync_limit("acme", "gmail").name,
        "mailsync-on-demand:acme",
        "mailsync-requests:key:key_01",  # older versions' per-key rate limits
        "mailsync-requests:address:127.0.0.1",  # and per-address ones
    ],
)
def test_an_idle_unheld_mailsync_limit_is_prunable_and_a_held_or_young_one_is_not(
    name: str,
) -> None:
    """A per-mailbox/workspace/key/address limit goes once untouched for the idle time with
    no slot taken; one slot taken, a second short of idle, or turned off by hand, it stays."""
    assert limit_is_prunable(_limit(name), NOW, IDLE)
    assert not limit_is_prunable(_limit(name, slots=1), NOW, IDLE)
    assert not limit_is_prunable(_limit(name, idle_for=IDLE - timedelta(seconds=1)), NOW, IDLE)
    assert not limit_is_prunable(_limit(name, active=False), NOW, IDLE)


def test_limits_that_are_not_per_workspace_or_mailbox_are_never_pruned() -> None:
    """Deployment limits, tag limits and other projects' limits on the same Prefect stay,
    however old: the pruner only removes the names mailsync makes per workspace or mailbox."""
    others = ["deployment:0b7c", "tag:mailsync", "billing-exports", "mailsync-mailboxes"]
    assert (
        prunable_limits([_limit(n, idle_for=timedelta(days=400)) for n in others], NOW, IDLE) == []
    )


def test_a_naive_timestamp_is_read_as_utc() -> None:
    """Timestamps without a zone (SQLite-style) are UTC, not local time."""
    naive = LimitView("i", mailbox_limit("m").name, 1, 0, True, (NOW - IDLE).replace(tzinfo=None))
    assert limit_is_prunable(naive, NOW, IDLE)


def test_only_terminal_flow_runs_ended_past_retention_are_prunable() -> None:
    """Completed, Failed, Cancelled and Crashed runs that ended over the retention ago go;
    a younger one, a run without an end, and every non-terminal state stay."""
    keep = timedelta(days=30)
    old = NOW - keep
    for state in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED"):
        assert flow_run_is_prunable(state, old, NOW, keep)
        assert not flow_run_is_prunable(state, old + timedelta(seconds=1), NOW, keep)
        assert not flow_run_is_prunable(state, None, NOW, keep)
    for state in ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING", None):
        assert not flow_run_is_prunable(state, NOW - timedelta(days=400), NOW, keep)
