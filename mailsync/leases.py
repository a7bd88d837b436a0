"""Holds a full sync's Prefect slot for as long as its flow run works, renewing the lease."""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from sqlmodel import col, update

from mailsync.admission import full_sync_limit
from mailsync.db import session_scope
from mailsync.limits import LimitsUnavailableError, PrefectLimits, Refusal
from mailsync.models import SyncJob

log = logging.getLogger(__name__)


class SlotBusyError(Exception):
    """Another full sync of the same workspace and provider holds the slot."""

    code = "sync_in_progress"


class FullSyncSlot:
    """Adopts the lease the API took (or takes one, for runs started in the Prefect UI or by
    a schedule), renews it every third of its duration, and releases it on exit."""

    def __init__(
        self,
        limits: PrefectLimits,
        database_url: str,
        job_id: str,
        workspace_id: str,
        providers: list[str],
        lease_id: str | None,
        lease_seconds: float,
    ) -> None:
        self.limits, self.database_url = limits, database_url
        self.job_id, self.workspace_id, self.providers = job_id, workspace_id, providers
        self.lease_id, self.lease_seconds = lease_id, lease_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _store(self, lease_id: str | None) -> None:
        self.lease_id = lease_id
        with session_scope(self.database_url) as session:
            session.exec(  # type: ignore[call-overload]
                update(SyncJob).where(col(SyncJob.id) == self.job_id).values(lease_id=lease_id)
            )

    def _take(self) -> None:
        specs = [full_sync_limit(self.workspace_id, p) for p in self.providers]
        taken = self.limits.take(specs, self.lease_seconds)
        if isinstance(taken, Refusal):
            raise SlotBusyError(
                f"another full sync of workspace {self.workspace_id} "
                f"({', '.join(self.providers)}) is queued or running; this one was not started"
            )
        self._store(taken)

    def __enter__(self) -> FullSyncSlot:
        if not (self.lease_id and self.limits.renew(self.lease_id, self.lease_seconds)):
            # Never taken (UI or schedule start) or lapsed while the run waited in the queue.
            self._take()
        self._thread = threading.Thread(target=self._keep, name="full-sync-lease", daemon=True)
        self._thread.start()
        return self

    def _keep(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                if self.lease_id and self.limits.renew(self.lease_id, self.lease_seconds):
                    continue
                log.warning("full-sync lease of job %s lapsed; taking the slot again", self.job_id)
                self._take()
            except (LimitsUnavailableError, SlotBusyError) as exc:
                log.warning("could not renew the full-sync lease of %s: %s", self.job_id, exc)

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lease_id:
            try:
                self.limits.release(self.lease_id)
            except LimitsUnavailableError:
                log.warning("could not release lease of %s; it expires by itself", self.job_id)
            self._store(None)
