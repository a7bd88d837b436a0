"""A push row read as the API's push state, at a given moment (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailsync.core.push.state import PushStatus, state_of
from mailsync.db.tables import MailboxPush

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _row(status: str, expires: datetime | None) -> MailboxPush:
    return MailboxPush(mailbox_id="mbx_1", provider="microsoft", status=status, expires_at=expires)


def test_the_moment_decides_between_active_and_expired() -> None:
    """active while its expiry is ahead (working: polled rarely), expired from the expiry on
    or without one; failing and off whatever the expiry; no row is off; an unknown stored
    status reads as failing rather than active."""
    ahead, behind = NOW + timedelta(seconds=1), NOW
    assert state_of(_row("active", ahead), "mbx_1", NOW).working
    assert state_of(_row("active", behind), "mbx_1", NOW).push is PushStatus.expired
    assert state_of(_row("active", None), "mbx_1", NOW).push is PushStatus.expired
    assert state_of(_row("failing", ahead), "mbx_1", NOW).push is PushStatus.failing
    assert state_of(_row("off", ahead), "mbx_1", NOW).push is PushStatus.off
    assert state_of(_row("bogus", ahead), "mbx_1", NOW).push is PushStatus.failing
    assert state_of(None, "mbx_1", NOW).push is PushStatus.off
    assert not state_of(None, "mbx_1", NOW).working
