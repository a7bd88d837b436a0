"""Every provider's push channels kept open: one call for a refresh round, one for disconnect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from mailsync.core.push import gmail_channels, graph_channels
from mailsync.db.tables import Mailbox, utcnow
from mailsync.settings import Settings


@dataclass
class ChannelReport:
    """What one maintenance did, by provider: mailbox ids opened, renewed, failed."""

    by_provider: dict[str, graph_channels.MaintenanceReport] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        totals = {"opened": 0, "renewed": 0, "failed": 0}
        for report in self.by_provider.values():
            totals["opened"] += len(report.opened)
            totals["renewed"] += len(report.renewed)
            totals["failed"] += len(report.failed)
        return totals

    def lines(self) -> list[str]:
        return [
            f"{provider}: {len(r.opened)} opened, {len(r.renewed)} renewed, "
            f"{len(r.failed)} failed" + (f" ({', '.join(r.failed[:10])})" if r.failed else "")
            for provider, r in self.by_provider.items()
        ]


def maintain(
    settings: Settings,
    now: Callable[[], datetime] = utcnow,
    workspaces: list[str] | None = None,
) -> ChannelReport:
    """Open and renew the push channels of every provider push is configured for (of the
    mailboxes of `workspaces` only, if given)."""
    report = ChannelReport()
    if settings.push_base_url is None:
        return report
    report.by_provider["microsoft"] = graph_channels.maintain(settings, now, workspaces=workspaces)
    if settings.gmail_pubsub_topic is not None:
        report.by_provider["gmail"] = gmail_channels.maintain(settings, now, workspaces=workspaces)
    return report


def stop(settings: Settings, mailbox: Mailbox) -> bool:
    """Stop the mailbox's push channel at its provider (on disconnect); True if it had one."""
    if mailbox.provider == "microsoft":
        return graph_channels.stop(settings, mailbox)
    if mailbox.provider == "gmail":
        return gmail_channels.stop(settings, mailbox)
    return False
