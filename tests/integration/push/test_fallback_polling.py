"""The safety net: refresh rounds keep polling mailboxes without working push, and poll those
with working push only every push interval; push state as core/push/state.py reads it. On
both databases, with an injected clock (`now`), never a sleep."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from mailsync.core import workspaces
from mailsync.core.push.state import PushStatus, push_state, push_states
from mailsync.core.schedule import refresh
from mailsync.db import session_scope
from mailsync.db.tables import Mailbox, MailboxPush

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
INTERVAL, PUSH_INTERVAL = 300, 3600


def _mailbox(
    session: Session, workspace_id: str, synced: datetime | None, push: MailboxPush | None
) -> str:
    mailbox = Mailbox(
        workspace_id=workspace_id,
        provider="microsoft",
        address=f"m-{secrets.token_hex(3)}@example.com",
        credentials_encrypted="x",
        last_synced_at=synced,
    )
    session.add(mailbox)
    session.flush()
    if push is not None:
        push.mailbox_id = mailbox.id
        session.add(push)
        session.flush()
    return mailbox.id


def _push(status: str, expires: datetime | None) -> MailboxPush:
    return MailboxPush(mailbox_id="", provider="microsoft", status=status, expires_at=expires)


def test_mailboxes_without_working_push_are_polled_and_with_it_rarely(database_url: str) -> None:
    """Synced 10 minutes ago: due when push is off, failing or expired (the subscription's
    expiry passed: push went silent), not when it is active; synced 2 hours ago: due
    whatever the push state. Without a push interval every stale mailbox is due."""
    ten_min, two_hours = NOW - timedelta(minutes=10), NOW - timedelta(hours=2)
    later = NOW + timedelta(days=1)
    with session_scope(database_url) as session:
        workspace = f"pp-{secrets.token_hex(4)}"
        workspaces.create_workspace(session, workspace)
        ids = {
            "none": _mailbox(session, workspace, ten_min, None),
            "off": _mailbox(session, workspace, ten_min, _push("off", None)),
            "failing": _mailbox(session, workspace, ten_min, _push("failing", later)),
            "expired": _mailbox(session, workspace, ten_min, _push("active", NOW)),
            "active": _mailbox(session, workspace, ten_min, _push("active", later)),
            "active-old": _mailbox(session, workspace, two_hours, _push("active", later)),
        }
        names = {v: k for k, v in ids.items()}
        due = refresh.due_mailboxes(
            session, NOW, INTERVAL, [workspace], push_interval_seconds=PUSH_INTERVAL
        )
        assert sorted(names[m.id] for m in due) == [
            "active-old",
            "expired",
            "failing",
            "none",
            "off",
        ]
        # An hour on, the active mailbox's expiry still ahead: it is due by the push interval.
        an_hour_on = refresh.due_mailboxes(
            session, NOW + timedelta(minutes=55), INTERVAL, [workspace],
            push_interval_seconds=PUSH_INTERVAL,
        )  # fmt: skip
        assert "active" in {names[m.id] for m in an_hour_on}
        without = refresh.due_mailboxes(session, NOW, INTERVAL, [workspace])
        assert len(without) == len(ids)


def test_push_state_reads_active_expired_failing_off(database_url: str) -> None:
    """The state the API shows: off without a row or when stopped, failing with its error,
    active until its expiry, expired from then on; with expiry and last notification."""
    with session_scope(database_url) as session:
        workspace = f"ps-{secrets.token_hex(4)}"
        workspaces.create_workspace(session, workspace)
        seen = NOW - timedelta(minutes=1)
        active = _push("active", NOW + timedelta(hours=1))
        active.last_notification_at = seen
        failing = _push("failing", None)
        failing.last_error = "ProviderError: Microsoft Graph 403"
        ids = [
            _mailbox(session, workspace, None, None),
            _mailbox(session, workspace, None, _push("off", None)),
            _mailbox(session, workspace, None, failing),
            _mailbox(session, workspace, None, active),
        ]
        states = push_states(session, ids, NOW)
        assert [states[i].push for i in ids] == [
            PushStatus.off,
            PushStatus.off,
            PushStatus.failing,
            PushStatus.active,
        ]
        assert states[ids[2]].last_error == "ProviderError: Microsoft Graph 403"
        view = states[ids[3]].public_view()
        assert view == {
            "push": "active",
            "push_expires_at": "2026-12-03T13:00:00Z",
            "last_notification_at": "2026-12-03T11:59:00Z",
        }
        later = push_state(session, ids[3], NOW + timedelta(hours=1))
        assert later.push is PushStatus.expired and not later.working
