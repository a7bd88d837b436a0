"""Message metadata through Gmail batch requests; refused parts are retried, and only those."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from googleapiclient.errors import HttpError

from mailsync.providers.base import MessageRecord, TransientProviderError
from mailsync.providers.gmail.errors import translate_http_error, translated
from mailsync.providers.gmail.pacing import QUOTA_COSTS, Pacer
from mailsync.providers.gmail.paging import chunks
from mailsync.providers.gmail.records import METADATA_HEADERS, to_record
from mailsync.providers.retry import RetryPolicy, retrying

logger = logging.getLogger(__package__)

MAX_BATCH_SIZE = 100  # Google's batch limit; Google advises 50 or fewer against rate limiting


@dataclass(frozen=True)
class MetadataBatches:
    """messages.get (format=metadata) for many ids, a batch request per `batch_size` of them.

    A part refused for quota or by a passing server error is sent again in the next batch per
    `policy`: the rest of the batch succeeded, and failing the whole page for one part would
    redo all of it. googleapiclient's own retry (num_retries) ignores Retry-After and never
    retries batch parts, so it is not used."""

    service: Any  # the gmail v1 API client
    messages: Any  # its users().messages() resource, built once
    pacer: Pacer
    policy: RetryPolicy

    def __call__(
        self, ids: list[str], batch_size: int, sleep: Callable[[float], None]
    ) -> tuple[list[MessageRecord], list[str]]:
        """(records in `ids` order, ids that are gone)."""
        records: dict[str, MessageRecord] = {}
        gone: list[str] = []
        for chunk in chunks(ids, batch_size):
            self._batch(chunk, records, gone, sleep)
        return [records[i] for i in ids if i in records], gone

    def _batch(
        self,
        ids: list[str],
        records: dict[str, MessageRecord],
        gone: list[str],
        sleep: Callable[[float], None],
    ) -> None:
        """One batch of `ids` into `records` (404s into `gone`); parts refused for a passing
        reason, and only those, are sent again per the policy."""
        pending = ids

        def fetch(attempt: int) -> None:
            nonlocal pending
            failures = self._send(pending, records)
            retry: list[str] = []
            wait = 0.0
            last: TransientProviderError | None = None
            last_exc: HttpError | None = None
            for mid, exc in failures.items():
                if int(exc.resp.status) == 404:
                    gone.append(mid)  # deleted since it was listed
                    continue
                error = translate_http_error(exc, "messages.get")
                if not isinstance(error, TransientProviderError):
                    raise error from exc
                retry.append(mid)
                wait = max(wait, error.retry_after or 0.0)
                last, last_exc = error, exc
            if not retry:
                return
            pending = retry
            raise TransientProviderError(
                f"{last} on {len(retry)} of {len(ids)} batch parts after {attempt} attempts",
                retry_after=wait or None,
            ) from last_exc

        def log(error: BaseException, delay: float, attempt: int) -> None:
            logger.info(
                "gmail: retrying %d of %d message fetches in %.2fs (attempt %d)",
                len(pending),
                len(ids),
                delay,
                attempt,
            )

        for attempt in retrying(self.policy, sleep=sleep, on_retry=log):
            with attempt:
                fetch(attempt.retry_state.attempt_number)

    def _send(self, ids: list[str], records: dict[str, MessageRecord]) -> dict[str, HttpError]:
        """One batch request of messages.get; fills `records`, returns the failed parts. A batch
        refused as a whole (429, 5xx or quota 403 on the envelope) fails every part with it."""
        failures: dict[str, HttpError] = {}

        def collect(request_id: str, response: Any, exception: Exception | None) -> None:
            if exception is None:
                records[request_id] = to_record(response)
            elif isinstance(exception, HttpError):
                failures[request_id] = exception
            else:  # pragma: no cover - the client only hands back HttpError
                raise exception

        batch = self.service.new_batch_http_request(callback=collect)
        for mid in ids:
            batch.add(
                self.messages.get(
                    userId="me", id=mid, format="metadata", metadataHeaders=METADATA_HEADERS
                ),
                request_id=mid,
            )
        # Google charges (and throttles) every part of a batch as a call of its own.
        self.pacer.acquire(QUOTA_COSTS["messages.get"] * len(ids))
        try:
            with translated("batch messages.get"):
                batch.execute()
        except TransientProviderError as error:
            if not isinstance(error.__cause__, HttpError):
                raise
            return {mid: error.__cause__ for mid in ids if mid not in records}
        return failures
