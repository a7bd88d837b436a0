"""GmailProvider: a full listing, then history increments, through Google's own client."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import google_auth_httplib2
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError

from mailsync.providers.base import (
    CursorExpiredError,
    MessageRecord,
    Page,
    ProviderEndpoints,
    ProviderError,
)
from mailsync.providers.gmail import credentials as auth
from mailsync.providers.gmail import paging
from mailsync.providers.gmail.batch import MAX_BATCH_SIZE, MetadataBatches
from mailsync.providers.gmail.errors import (
    answered,
    expired_history,
    stale_page_token,
    translated,
)
from mailsync.providers.gmail.pacing import DEFAULT_QUOTA_UNITS_PER_MINUTE, QUOTA_COSTS, Pacer
from mailsync.providers.gmail.paging import HISTORY_TYPES, MAX_PAGE_SIZE
from mailsync.providers.gmail.transport import TRANSPORTS, Lease, TransportPool, discovery_for
from mailsync.providers.retry import RetryPolicy, retrying

logger = logging.getLogger(__package__)  # the name it had before the package split

# A call or batch part Gmail refused for quota or by a passing server error (429, 5xx, quota
# 403) is tried 5 times in all, waiting 0.25 s doubling, or the Retry-After when longer; one
# that asks for more than 10 s is handed to the caller with its Retry-After. Failures below
# HTTP (connections, the token endpoint) are not retried here.
RETRY = RetryPolicy(attempts=5, backoff=0.25, max_retry_after=10.0, when=answered)


@dataclass(frozen=True)
class Watch:
    """A users.watch: the history id it started at, and when it lapses."""

    history_id: str
    expires_at: datetime


class GmailProvider:
    """One Gmail mailbox, read with the gmail.readonly scope.

    Every call is paced to the per-user quota (see Pacer) and a call or batch part refused for
    quota or by a passing server error is retried, honouring Retry-After up to a cap.
    `auth_state` is secret (a live access token): never log it or this provider's credentials.
    """

    name = "gmail"
    # Batch parts are retried one by one (see MetadataBatches), googleapiclient's own retry
    # (num_retries) ignoring Retry-After and never retrying batch parts.
    part_retry = RETRY
    # The same for single calls (getProfile, messages.list, history.list).
    call_retry = RETRY

    def __init__(
        self,
        address: str,
        credentials: dict[str, Any],
        endpoints: ProviderEndpoints,
        *,
        page_size: int = 500,
        batch_size: int = 50,
        timeout: float = 30.0,
        auth_state: str | None = None,
        quota_units_per_minute: int = DEFAULT_QUOTA_UNITS_PER_MINUTE,
        quota_window_s: float = 60.0,
        pacer: Pacer | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be within 1..{MAX_PAGE_SIZE}")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be within 1..{MAX_BATCH_SIZE}")
        if quota_units_per_minute < 1:
            raise ValueError("quota_units_per_minute must be positive")
        self.address = address
        self.page_size = page_size
        self.batch_size = batch_size
        self.pacer = pacer or Pacer(quota_units_per_minute, quota_window_s)
        self._sleep = sleep
        valid = auth.validate_credentials(credentials)
        self._loan = TRANSPORTS.borrow(
            (endpoints.ca_bundle, timeout), lambda: TransportPool(endpoints.ca_bundle, timeout)
        )
        self._lease = Lease(self._loan.value.checkout())
        try:
            # Token refreshes go through the same transport, so the token endpoint gets the same
            # trust.
            self._creds = auth.google_credentials(
                address, valid, endpoints, google_auth_httplib2.Request(self._lease)
            )
            self._auth_subject = auth.auth_subject(address, valid)
            if auth_state and not auth.seed_token(self._creds, auth_state, self._auth_subject):
                logger.info(
                    "gmail: stored auth state for %s not usable; a token will be fetched", address
                )
            self._seeded_token: str | None = self._creds.token
            self._http = google_auth_httplib2.AuthorizedHttp(self._creds, http=self._lease)
            self._service = build_from_document(
                discovery_for(endpoints.gmail_api_url), http=self._http
            )
            self._users = self._service.users()
            # googleapiclient builds every method of a resource each time it is asked for one:
            # asking once per message cost more than the HTTP traffic of a full sync.
            self._messages = self._users.messages()
            self._history = self._users.history()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> GmailProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Hand the transport back to the process's pool (with its connections, unless a call
        failed below HTTP); the provider makes no calls afterwards."""
        transport, self._lease.http = self._lease.http, None
        if transport is not None:
            # Back in the pool before the pool is released: a released pool may be closed.
            self._loan.value.checkin(transport, clean=self._lease.clean)
        self._loan.release()

    def auth_state(self) -> str | None:
        """The access token and its expiry, when a new one was fetched during this provider's
        life; pass it back as `auth_state=` so the next sync skips the token endpoint. Secret."""
        token = self._creds.token
        if not token or token == self._seeded_token:
            return None
        return auth.dump_token(self._creds, self._auth_subject)

    # -- single calls, paced and retried ------------------------------------------------------

    def _call(
        self,
        what: str,
        request: Any,
        on_http_error: Callable[[HttpError], None] | None = None,
    ) -> dict[str, Any]:
        """Execute one request (`what` names a QUOTA_COSTS method): paced, and retried per
        `call_retry` on 429, 5xx and quota 403. `on_http_error` may raise a more specific error
        for an HttpError first."""

        def execute() -> dict[str, Any]:
            self.pacer.acquire(QUOTA_COSTS[what])
            with translated(what):
                try:
                    # users.stop answers 204: no body at all.
                    result: dict[str, Any] = request.execute() or {}
                    return result
                except HttpError as exc:
                    if on_http_error is not None:
                        on_http_error(exc)
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

        def log(error: BaseException, delay: float, attempt: int) -> None:
            logger.info(
                "gmail: %s refused (%s); retrying in %.2fs (attempt %d)",
                what,
                error,
                delay,
                attempt,
            )

        result: dict[str, Any] = retrying(self.call_retry, sleep=self._sleep, on_retry=log)(execute)
        return result

    # -- push -----------------------------------------------------------------------------------

    def watch(self, topic: str) -> Watch:
        """users.watch: Gmail publishes this mailbox's changes to the Pub/Sub `topic` (its
        service account needs the Publisher role there) until the watch lapses (7 days)."""
        body = self._call("users.watch", self._users.watch(userId="me", body={"topicName": topic}))
        try:
            expires = datetime.fromtimestamp(int(body["expiration"]) / 1000, UTC)
            return Watch(history_id=str(body["historyId"]), expires_at=expires)
        except (KeyError, ValueError, TypeError) as exc:
            raise ProviderError(
                "gmail users.watch answered without historyId or expiration"
            ) from exc

    def stop_watch(self) -> None:
        """users.stop: no more push notifications for this mailbox."""
        self._call("users.stop", self._users.stop(userId="me"))

    # -- sync -----------------------------------------------------------------------------------

    def account_address(self) -> str:
        """The mailbox's address as Gmail knows it (users.getProfile): whose grant this is."""
        profile = self._call("users.getProfile", self._users.getProfile(userId="me"))
        return str(profile["emailAddress"]).lower()

    def full_sync(self, checkpoint: str | None = None) -> Iterator[Page]:
        """Every message, newest first, a page per messages.list page. Each page's checkpoint
        resumes right after it (in any provider instance); the cursor is the history id read
        before the first page, so changes made while listing (or while stopped) are replayed
        by the next increment rather than lost."""
        resumed = checkpoint is not None
        if checkpoint is not None:
            cursor, token, total = paging.parse_checkpoint(checkpoint)
            logger.info("gmail: resuming the full sync of %s from a checkpoint", self.address)
            if token is None:  # the checkpoint of the last page: nothing is left to list
                yield Page(cursor=cursor, checkpoint=checkpoint, total_estimate=total)
                return
        else:
            profile = self._call("users.getProfile", self._users.getProfile(userId="me"))
            cursor = str(profile["historyId"])
            token = None
            raw_total = profile.get("messagesTotal")
            total = int(raw_total) if raw_total is not None else None
        while True:
            listing = self._call(
                "messages.list",
                self._messages.list(
                    userId="me",
                    maxResults=self.page_size,
                    pageToken=token,
                    includeSpamTrash=True,  # history reports spam/trash too; the index mirrors it
                ),
                on_http_error=stale_page_token if resumed else None,
            )
            resumed = False
            ids = list(dict.fromkeys(m["id"] for m in listing.get("messages", [])))
            token = listing.get("nextPageToken")
            records, gone = self._fetch(ids)
            yield Page(
                upserts=records,
                deletions=gone,
                cursor=None if token else cursor,
                checkpoint=paging.checkpoint(cursor, token, total),
                total_estimate=total,
            )
            if not token:
                return

    def incremental_sync(self, cursor: str) -> Iterator[Page]:
        if not str(cursor).isdigit():
            raise CursorExpiredError("gmail cursor is not a history id")
        changed: dict[str, None] = {}  # insertion-ordered set
        deleted: dict[str, None] = {}
        new_cursor: str | None = None
        token: str | None = None
        while True:
            response = self._call(
                "history.list",
                self._history.list(
                    userId="me",
                    startHistoryId=cursor,
                    historyTypes=HISTORY_TYPES,
                    maxResults=MAX_PAGE_SIZE,
                    pageToken=token,
                ),
                on_http_error=expired_history,
            )
            # The first page's historyId is safe: every change up to it is in the listing; later
            # pages may hold newer records, and replaying those next time is harmless.
            if new_cursor is None:
                new_cursor = str(response["historyId"])
            paging.fold_history(response, changed, deleted)
            token = response.get("nextPageToken")
            if not token:
                break
        ids = list(changed)
        pending_deletions = list(deleted)
        if not ids:
            yield Page(deletions=pending_deletions, cursor=new_cursor)
            return
        chunks = list(paging.chunks(ids, self.page_size))
        for index, chunk in enumerate(chunks):
            records, gone = self._fetch(chunk)
            last = index == len(chunks) - 1
            yield Page(
                upserts=records,
                deletions=pending_deletions + gone,
                cursor=new_cursor if last else None,
            )
            pending_deletions = []

    # -- metadata via batch ---------------------------------------------------------------------

    def _fetch(self, ids: list[str]) -> tuple[list[MessageRecord], list[str]]:
        """Metadata for `ids` in batches; returns (records in `ids` order, ids that are gone)."""
        fetch = MetadataBatches(self._service, self._messages, self.pacer, self.part_retry)
        return fetch(ids, self.batch_size, self._sleep)
