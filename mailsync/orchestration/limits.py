"""Prefect global concurrency limits as mailsync uses them: non-blocking takes with leases.

Facts that shape this module (prefect 3.9): a take on a full limit answers 423 at once; a take
on a limit that does not exist is not enforced (200 with an empty `limits` list), so limits
are created before use and an empty answer is an error; a take over several names is all or
nothing; renewing a released or expired lease answers 410.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError

from mailsync.core.rules.slots import LimitSpec, Refusal
from mailsync.errors import PrefectUnavailableError
from mailsync.orchestration.boundary import UNREACHABLE


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


class PrefectLimits:
    def __init__(self, client: Callable[[], SyncPrefectClient]) -> None:
        self._client = client
        self._known: dict[str, LimitSpec] = {}
        self._lock = threading.Lock()

    def ensure(self, specs: list[LimitSpec]) -> None:
        """Create or update the limits once per process (and again after they vanish)."""
        for spec in specs:
            with self._lock:
                if self._known.get(spec.name) == spec:
                    continue
            try:
                self._upsert(spec)
            except ObjectAlreadyExists:
                self._upsert(spec)  # a concurrent request created it first: now an update
            except UNREACHABLE as exc:
                raise PrefectUnavailableError("Prefect refused to create a limit") from exc
            with self._lock:
                self._known[spec.name] = spec

    def _upsert(self, spec: LimitSpec) -> None:
        self._client().upsert_global_concurrency_limit_by_name(spec.name, spec.limit)

    def _forget(self, names: list[str]) -> None:
        with self._lock:
            for name in names:
                self._known.pop(name, None)

    def take(
        self, specs: list[LimitSpec], lease_seconds: float, *, ensure_first: bool = True
    ) -> str | Refusal:
        """One slot of every limit, or none: returns the lease id, or a Refusal when full.

        `ensure_first=False` asks before creating the limits (a fresh process's every take
        would otherwise begin with an upsert's two calls); for limits whose size never
        changes, since an existing limit is then never updated."""
        names = [s.name for s in specs]
        for attempt in (1, 2):
            if ensure_first or attempt == 2:
                self.ensure(specs)
            response = self._increment(
                lambda: self._client().increment_concurrency_slots_with_lease(
                    names, 1, "concurrency", lease_seconds
                )
            )
            if isinstance(response, Refusal):
                return response
            body = response.json()
            if len(body.get("limits", [])) == len(names):
                return str(body["lease_id"])
            # Some limit does not exist (deleted behind our back): not enforced. Give back
            # what was taken and create the limits again.
            self.release(str(body["lease_id"]))
            self._forget(names)
        raise PrefectUnavailableError(f"Prefect does not enforce the limits {names}")

    @staticmethod
    def _increment(call: Callable[[], httpx.Response]) -> httpx.Response | Refusal:
        """A slot-taking call: its answer, or a Refusal when Prefect says 423 (limit full)."""
        try:
            return call()
        except PrefectHTTPStatusError as exc:
            if _status(exc) == 423:
                header = exc.response.headers.get("retry-after")
                return Refusal(float(header) if header else None)
            raise PrefectUnavailableError("Prefect refused the slot") from exc
        except httpx.HTTPError as exc:
            raise PrefectUnavailableError("the Prefect API could not be reached") from exc

    def renew(self, lease_id: str, lease_seconds: float) -> bool:
        """Extend a lease; False when it is gone (released, expired or reclaimed)."""
        try:
            self._client().renew_concurrency_lease(UUID(lease_id), lease_seconds)
        except PrefectHTTPStatusError as exc:
            if _status(exc) in (404, 410):
                return False
            raise PrefectUnavailableError("Prefect refused to renew the lease") from exc
        except ObjectNotFound:
            return False
        except httpx.HTTPError as exc:
            raise PrefectUnavailableError("the Prefect API could not be reached") from exc
        return True

    def release(self, lease_id: str) -> None:
        """Give a lease back; releasing twice, or an expired lease, is harmless."""
        try:
            self._client().release_concurrency_slots_with_lease(UUID(lease_id))
        except (PrefectHTTPStatusError, ObjectNotFound) as exc:
            if _status(exc) not in (None, 404, 410):
                raise PrefectUnavailableError("Prefect refused to release the lease") from exc
        except httpx.HTTPError as exc:
            raise PrefectUnavailableError("the Prefect API could not be reached") from exc

    def active_slots(self, name: str) -> int:
        try:
            return int(self._client().read_global_concurrency_limit_by_name(name).active_slots)
        except ObjectNotFound:
            return 0
        except UNREACHABLE as exc:
            raise PrefectUnavailableError("the Prefect API could not be reached") from exc
