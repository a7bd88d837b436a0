"""Prefect slots a flow run holds while it works (a full sync's, a mailbox's turn), renewed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType

from sqlmodel import col, delete, update

from mailsync.core.rules.admission import full_sync_limit
from mailsync.core.rules.slots import LimitSpec, Refusal
from mailsync.db import session_scope
from mailsync.db.tables import RunLease, SyncJob
from mailsync.errors import MailboxBusyError, PrefectUnavailableError, SyncInProgressError
from mailsync.orchestration.limits import PrefectLimits

log = logging.getLogger(__name__)


class Renewal:
    """Calls `renew_once` every `interval` seconds on a daemon thread until stopped; it logs
    its own failures (a lease that cannot be renewed now may be renewed on the next turn)."""

    def __init__(self, renew_once: Callable[[], None], interval: float, name: str) -> None:
        self._renew_once, self._interval = renew_once, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._renew_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


class HeldLease:
    """A lease held with a renewal thread: `__exit__` stops renewing and gives it back (a
    release Prefect cannot take is left to expire). Subclasses take it in `__enter__`."""

    limits: PrefectLimits
    lease_id: str | None
    _renewal: Renewal | None

    def _released(self, lease_id: str) -> None:
        """After the release: what else the holder records."""

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if self._renewal is not None:
            self._renewal.stop()
        if self.lease_id:
            lease_id, self.lease_id = self.lease_id, None
            try:
                self.limits.release(lease_id)
            except PrefectUnavailableError:
                log.warning("could not release lease %s; it expires by itself", lease_id)
            self._released(lease_id)


class RunLeases:
    """The turn leases one flow run holds, as RunLease rows: its crash or cancellation hook
    gives them back (runtime.release_run_lease), where its own `__exit__` never ran."""

    def __init__(self, database_url: str, flow_run_id: str) -> None:
        self.database_url, self.flow_run_id = database_url, flow_run_id

    def record(self, lease_id: str) -> None:
        with session_scope(self.database_url) as session:
            session.add(RunLease(lease_id=lease_id, flow_run_id=self.flow_run_id))

    def forget(self, lease_id: str) -> None:
        with session_scope(self.database_url) as session:
            session.exec(delete(RunLease).where(col(RunLease.lease_id) == lease_id))  # type: ignore[call-overload]


class HeldTurn(HeldLease):
    """A turn's lease, and whether it may have lapsed: Prefect said it is gone, or no renewal
    was confirmed for a whole lease time (Prefect unreachable: the lease may have expired on
    the server and another sync taken the turn). The time counts from when the last confirmed
    take or renewal was sent, on this process's monotonic clock, so it never runs late."""

    lease_seconds: float
    _clock: Callable[[], float]
    _confirmed_at: float = 0.0
    _lost: bool = False
    book: RunLeases | None = None

    def _hold(self, lease_id: str) -> None:
        if self.book is not None:
            try:
                self.book.record(lease_id)
            except Exception:
                # Unrecorded, the turn would outlive a crash: give it back, as if never taken.
                with suppress(PrefectUnavailableError):
                    self.limits.release(lease_id)
                raise
        self.lease_id = lease_id

    def _released(self, lease_id: str) -> None:
        if self.book is not None:
            self.book.forget(lease_id)

    @property
    def lapsed(self) -> bool:
        if self._lost:
            return True
        return self.lease_id is not None and (
            self._clock() - self._confirmed_at >= self.lease_seconds
        )


class MailboxTurn(HeldTurn):
    """The one slot of a mailbox's limit, held by one sync at a time: waits for it (Prefect's
    Retry-After, at most a second between asks), renews its lease, gives it back on exit.

    Why not Prefect's `concurrency()` block: each one opened its own clients (a TLS context
    each), an acquisition service and a lease-renewal thread, ~0.5 s of a 100-message
    incremental sync (BENCHMARKS.md); this takes one client's calls: take, renew, release.
    It asks before it creates: the limit exists for every sync but a mailbox's first."""

    def __init__(
        self,
        limits: PrefectLimits,
        spec: LimitSpec,
        wait_seconds: float,
        lease_seconds: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        book: RunLeases | None = None,
    ) -> None:
        self.limits, self.spec = limits, spec
        self.wait_seconds, self.lease_seconds = wait_seconds, lease_seconds
        self._sleep, self._clock, self.book = sleep, clock, book
        self.lease_id: str | None = None
        self._renewal: Renewal | None = None

    def __enter__(self) -> MailboxTurn:
        deadline = self._clock() + self.wait_seconds
        while True:
            self._confirmed_at = self._clock()
            taken = self.limits.take([self.spec], self.lease_seconds, ensure_first=False)
            if not isinstance(taken, Refusal):
                break
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise MailboxBusyError(
                    f"another sync of {self.spec.name} held it for over {self.wait_seconds:g} s;"
                    " this one did not start"
                )
            self._sleep(min(remaining, 1.0, max(0.05, taken.retry_after or 1.0)))
        self._hold(taken)
        self._renewal = Renewal(self._renew_once, self.lease_seconds / 3, "mailbox-turn-lease")
        self._renewal.start()
        return self

    def _renew_once(self) -> None:
        _renew_turn(self, self.spec.name)


def _renew_turn(turn: HeldTurn, what: str) -> None:
    """One renewal of a turn's lease; a lease Prefect no longer knows marks the turn lapsed."""
    assert turn.lease_id is not None
    sent = turn._clock()
    try:
        if turn.limits.renew(turn.lease_id, turn.lease_seconds):
            turn._confirmed_at = sent
        else:
            turn._lost = True
            log.warning("the lease on %s lapsed while its sync ran", what)
    except PrefectUnavailableError as exc:
        log.warning("could not renew the lease on %s: %s", what, exc)


class MailboxTurns(HeldTurn):
    """The turns of several mailboxes under one lease, taken at once or not at all, without
    waiting: a refresh round takes its job's mailboxes this way, one Prefect call instead of
    a take and a release per mailbox (BENCHMARKS.md, fan-out). `held` says whether it got
    them; a caller that did not takes each mailbox's own MailboxTurn, which waits."""

    def __init__(
        self,
        limits: PrefectLimits,
        specs: list[LimitSpec],
        lease_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        book: RunLeases | None = None,
    ) -> None:
        self.limits, self.specs, self.lease_seconds = limits, specs, lease_seconds
        self._clock, self.book = clock, book
        self.lease_id: str | None = None
        self._renewal: Renewal | None = None

    @property
    def held(self) -> bool:
        return self.lease_id is not None

    def __enter__(self) -> MailboxTurns:
        if not self.specs:
            return self
        self._confirmed_at = self._clock()
        taken = self.limits.take(self.specs, self.lease_seconds, ensure_first=False)
        if isinstance(taken, Refusal):
            return self
        self._hold(taken)
        self._renewal = Renewal(self._renew_once, self.lease_seconds / 3, "mailbox-turns-lease")
        self._renewal.start()
        return self

    def _renew_once(self) -> None:
        _renew_turn(self, f"{len(self.specs)} mailboxes' turns")


class FullSyncSlot(HeldLease):
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
        self._renewal: Renewal | None = None

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
            raise SyncInProgressError(
                f"another full sync of workspace {self.workspace_id} "
                f"({', '.join(self.providers)}) is queued or running; this one was not started"
            )
        self._store(taken)

    def __enter__(self) -> FullSyncSlot:
        if not (self.lease_id and self.limits.renew(self.lease_id, self.lease_seconds)):
            # Never taken (UI or schedule start) or lapsed while the run waited in the queue.
            self._take()
        self._renewal = Renewal(self._keep_once, self.lease_seconds / 3, "full-sync-lease")
        self._renewal.start()
        return self

    def _keep_once(self) -> None:
        try:
            if self.lease_id and self.limits.renew(self.lease_id, self.lease_seconds):
                return
            log.warning("full-sync lease of job %s lapsed; taking the slot again", self.job_id)
            self._take()
        except (PrefectUnavailableError, SyncInProgressError) as exc:
            log.warning("could not renew the full-sync lease of %s: %s", self.job_id, exc)

    def _released(self, lease_id: str) -> None:
        self._store(None)
