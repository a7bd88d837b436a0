"""What flows and the library hand each other about a job: typed values, never loose dicts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailsync.core.sync.engine import MailboxResult


@dataclass(frozen=True)
class MailboxRef:
    """One mailbox a job syncs; `has_cursor`: synced before (an incremental sync is quick)."""

    mailbox_id: str
    provider: str
    address: str
    has_cursor: bool = False


@dataclass(frozen=True)
class JobRef:
    """A job as its run sees it once opened: identifiers only, never credentials."""

    job_id: str
    workspace_id: str
    providers: tuple[str, ...]
    mode: str
    mailboxes: tuple[MailboxRef, ...] = ()
    lease_id: str | None = None  # the full-sync slot's lease, taken by the API
    # A push job (orchestration/push_jobs.py) is running only once it holds its mailbox's
    # turn, and then gives back the mailbox's queued-sync slot.
    push: bool = False


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a code of mailsync.errors and a message safe to show."""

    code: str
    message: str


# What syncing one mailbox of a job came to: its result, or what it raised.
MailboxOutcome = MailboxResult | BaseException


@dataclass(frozen=True)
class MailboxFailure:
    """A mailbox of a job that did not sync, and why."""

    mailbox_id: str
    error: JobError
    provider: str = ""
    address: str = ""
    requested_mode: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Its entry in the job record: no mode performed, no counts, its error."""
        return {
            "mailbox_id": self.mailbox_id,
            "provider": self.provider,
            "address": self.address,
            "requested_mode": self.requested_mode,
            "performed_mode": None,
            "reason": None,
            "resumed": False,
            "counts": {},
            "error": {"code": self.error.code, "message": self.error.message},
        }


@dataclass(frozen=True)
class JobEnd:
    """How a job ended: the results of the mailboxes that synced and its first error
    (`failures`: every mailbox that did not sync, for the mailboxes' own state)."""

    job_id: str
    results: Sequence[MailboxResult] = field(default_factory=tuple)
    error: JobError | None = None
    failures: Sequence[MailboxFailure] = field(default_factory=tuple)

    def mailbox_entries(self) -> list[dict[str, Any]]:
        """The job record's (and the API's) mailbox entries: those that synced, then those
        that did not, each with its error (provider_auth_failed for a refused grant)."""
        return [r.as_dict() for r in self.results] + [f.as_dict() for f in self.failures]

    def counts(self) -> dict[str, int]:
        """The job's counts: the sum over its mailboxes."""
        totals: dict[str, int] = {}
        for result in self.results:
            for key, value in result.counts.as_dict().items():
                totals[key] = totals.get(key, 0) + value
        return totals
