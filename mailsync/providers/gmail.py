"""Gmail as a MailProvider: a full listing, then history increments, via Google's own client."""

from __future__ import annotations

import functools
import json
import logging
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
import google_auth_httplib2
import httplib2
from google.oauth2 import service_account
from google.oauth2.credentials import Credentials as OAuthCredentials
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import BatchError, HttpError

from mailsync.providers import pools
from mailsync.providers.base import (
    AuthError,
    CursorExpiredError,
    MessageRecord,
    Page,
    ProviderEndpoints,
    ProviderError,
    TransientProviderError,
)

logger = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/gmail.readonly"]
METADATA_HEADERS = ["From", "To", "Cc", "Subject", "Date"]
HISTORY_TYPES = ["messageAdded", "messageDeleted", "labelAdded", "labelRemoved"]
MAX_PAGE_SIZE = 500  # messages.list and history.list maxResults ceiling
MAX_BATCH_SIZE = 100  # Google's batch limit; Google advises 50 or fewer against rate limiting
# Reasons Google gives on a 403 that mean "slow down", not "forbidden".
_QUOTA_REASONS = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "dailyLimitExceeded"}
)


def validate_credentials(credentials: dict[str, Any]) -> dict[str, Any]:
    """Check a Gmail credentials dict and return it normalized; errors never echo values."""
    if not isinstance(credentials, dict):
        raise ValueError("gmail credentials must be an object")
    kind = credentials.get("type")
    if kind == "oauth":
        out: dict[str, Any] = {"type": "oauth"}
        for key in ("client_id", "client_secret", "refresh_token"):
            value = credentials.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"gmail oauth credentials need a non-empty string '{key}'")
            out[key] = value.strip()
        return out
    if kind == "service_account":
        info = credentials.get("info")
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                raise ValueError("gmail service_account 'info' is not valid JSON") from None
        if not isinstance(info, dict):
            raise ValueError("gmail service_account credentials need an 'info' object")
        for key in ("client_email", "private_key"):
            if not isinstance(info.get(key), str) or not info[key].strip():
                raise ValueError(f"gmail service_account info needs a non-empty string '{key}'")
        if "PRIVATE KEY-----" not in info["private_key"]:
            raise ValueError("gmail service_account 'private_key' is not a PEM private key")
        return {"type": "service_account", "info": dict(info)}
    raise ValueError("gmail credentials 'type' must be 'oauth' or 'service_account'")


@functools.cache
def _static_discovery() -> str:
    doc = get_static_doc("gmail", "v1")
    if doc is None:  # pragma: no cover - the document ships inside google-api-python-client
        raise RuntimeError("google-api-python-client lacks its bundled gmail v1 discovery document")
    return doc


def preload() -> None:
    """Read the bundled discovery document now (a process that forks runs does it for all)."""
    _static_discovery()


def _discovery_for(api_url: str) -> dict[str, Any]:
    """The bundled discovery document pointed at `api_url`; the batch URL is derived from
    rootUrl + batchPath, which client_options' api_endpoint would leave at production."""
    root = api_url.rstrip("/") + "/"
    # Parsed afresh for every provider: build_from_document writes into the method
    # descriptions as resources are built, so one parsed copy cannot serve several threads.
    doc: dict[str, Any] = json.loads(_static_discovery())
    doc.update(rootUrl=root, baseUrl=root, mtlsRootUrl=root, batchPath="batch/gmail/v1")
    return doc


# -- transports, reused across the mailboxes of a process --------------------------------------

# Idle transports kept per (ca_bundle, timeout): a refresh round syncs 16 mailboxes at once.
MAX_IDLE_TRANSPORTS = 32


def _settings(http: httplib2.Http) -> dict[str, Any]:
    """Everything an Http holds besides its connections (which hold no credentials: the
    Authorization header is added per request by AuthorizedHttp)."""
    state = {name: value for name, value in vars(http).items() if name != "connections"}
    state["credentials"] = list(http.credentials.credentials)
    state["certificates"] = list(http.certificates.credentials)
    return state


def _unusable(sock: Any) -> bool:
    """Whether an idle kept-alive socket has something to read: the server's close, a reset,
    or bytes nobody asked for. httplib2 would only find out by failing its next request."""
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _TransportPool:
    """Idle httplib2.Http transports of one (ca_bundle, timeout), each with its connections.

    httplib2.Http is not thread-safe, so a provider has one to itself from construction to
    close() instead of sharing one. A transport comes back scrubbed of httplib2's own
    credential store; one that differs from a new one in anything else is closed, not kept."""

    def __init__(self, ca_bundle: str | None, timeout: float) -> None:
        self._ca_bundle = ca_bundle
        self._timeout = timeout
        self._fresh = _settings(self._new())
        self._idle: pools.IdlePool[httplib2.Http] = pools.IdlePool(MAX_IDLE_TRANSPORTS)

    def __len__(self) -> int:
        return len(self._idle)

    def _new(self) -> httplib2.Http:
        # An explicit ca_certs wins over HTTPLIB2_CA_CERTS and friends in the environment.
        return httplib2.Http(ca_certs=self._ca_bundle, timeout=self._timeout)

    def checkout(self) -> httplib2.Http:
        http = self._idle.take()
        if http is None:
            return self._new()
        for key, conn in list(http.connections.items()):
            sock = getattr(conn, "sock", None)
            if sock is not None and _unusable(sock):
                conn.close()
                del http.connections[key]
        return http

    def checkin(self, http: httplib2.Http, *, clean: bool) -> None:
        if clean:
            http.clear_credentials()
            http.certificates.clear()
        else:
            http.close()  # every connection, and the same scrubbing
        if _settings(http) != self._fresh or not self._idle.give(http):
            http.close()

    def close(self) -> None:
        for http in self._idle.drain():
            http.close()


_TRANSPORTS: pools.Pooled[_TransportPool] = pools.Pooled(
    "gmail transports", dispose=_TransportPool.close
)


class _Lease:
    """A provider's hold on a pooled transport. Everything of the provider (the API client,
    token refreshes) calls through the lease, so giving the transport back cuts all of them
    off at once: a closed provider cannot reach a transport another mailbox now uses."""

    def __init__(self, http: httplib2.Http) -> None:
        self.http: httplib2.Http | None = http
        self.clean = True

    def request(self, *args: Any, **kwargs: Any) -> Any:
        http = self.http
        if http is None:
            raise ProviderError("this gmail provider is closed")
        try:
            return http.request(*args, **kwargs)
        except BaseException:
            # httplib2 raises only below HTTP (an answer with any status is returned). A timeout
            # or a broken read can leave an answer unread on a kept-alive connection, where the
            # next mailbox would read it as the answer to its own request.
            self.clean = False
            raise

    def close(self) -> None:
        pass  # AuthorizedHttp.close() would get here; the provider's close() decides


class _OAuthCredentials(OAuthCredentials):
    """OAuth user credentials that refresh through the provider's own transport.

    googleapiclient's batch refreshes (initial, and on a 401 part) go through a bare
    httplib2.Http() of its own, with neither endpoints.ca_bundle nor a timeout."""

    refresh_request: google.auth.transport.Request | None = None

    def refresh(self, request: google.auth.transport.Request) -> None:
        super().refresh(self.refresh_request or request)


class _ServiceAccountCredentials(service_account.Credentials):
    """Service-account credentials pinned to the provider's transport; see _OAuthCredentials."""

    refresh_request: google.auth.transport.Request | None = None

    def refresh(self, request: google.auth.transport.Request) -> None:
        super().refresh(self.refresh_request or request)


def _google_credentials(
    address: str,
    credentials: dict[str, Any],
    endpoints: ProviderEndpoints,
    refresh_request: google.auth.transport.Request,
) -> _OAuthCredentials | _ServiceAccountCredentials:
    creds: _OAuthCredentials | _ServiceAccountCredentials
    if credentials["type"] == "oauth":
        creds = _OAuthCredentials(
            token=None,
            refresh_token=credentials["refresh_token"],
            token_uri=endpoints.google_token_uri,
            client_id=credentials["client_id"],
            client_secret=credentials["client_secret"],
        )
    else:
        info = {**credentials["info"], "token_uri": endpoints.google_token_uri}
        try:
            creds = _ServiceAccountCredentials.from_service_account_info(
                info, scopes=SCOPES, subject=address
            )
        except (ValueError, TypeError):
            # `from None`: the parser's error may quote key material.
            raise ValueError("gmail service_account private_key could not be loaded") from None
    creds.refresh_request = refresh_request
    return creds


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_reasons(exc: HttpError) -> set[str]:
    try:
        body = json.loads(exc.content)
        return {str(e.get("reason")) for e in body["error"].get("errors", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        return set()


def translate_http_error(exc: HttpError, what: str) -> ProviderError:
    """Map a Gmail HTTP error onto the provider exception hierarchy."""
    status = int(exc.resp.status)
    reasons = _error_reasons(exc)
    label = f"gmail {what}: HTTP {status}" + (f" ({', '.join(sorted(reasons))})" if reasons else "")
    retry_after = _retry_after(exc.resp.get("retry-after"))
    if status == 401:
        return AuthError(label)
    if status == 429 or status >= 500 or (status == 403 and reasons & _QUOTA_REASONS):
        return TransientProviderError(label, retry_after=retry_after)
    if status == 403:
        return AuthError(label)  # insufficient scope, delegation denied: the grant is wrong
    return ProviderError(label)


def _refresh_error_code(exc: google.auth.exceptions.RefreshError) -> str:
    # Only the OAuth error code: descriptions are Google's, but keep the surface minimal.
    if len(exc.args) > 1 and isinstance(exc.args[1], dict):
        return str(exc.args[1].get("error", "unknown"))
    return str(exc.args[0]).split(":", 1)[0] if exc.args else "unknown"


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn anything the client stack raises into a ProviderError, chained with `from`."""
    try:
        yield
    except ProviderError:
        raise
    except HttpError as exc:
        raise translate_http_error(exc, what) from exc
    except google.auth.exceptions.RefreshError as exc:
        code = _refresh_error_code(exc)
        if getattr(exc, "retryable", False):
            raise TransientProviderError(f"gmail token refresh failed: {code}") from exc
        raise AuthError(f"gmail token refresh refused: {code}") from exc
    except google.auth.exceptions.TransportError as exc:
        raise TransientProviderError(f"gmail token endpoint unreachable during {what}") from exc
    except ssl.SSLCertVerificationError as exc:
        # A trust problem is configuration, not weather: retrying cannot fix it.
        raise ProviderError(f"gmail {what}: TLS certificate verification failed") from exc
    except (TimeoutError, ConnectionError, httplib2.HttpLib2Error, OSError) as exc:
        raise TransientProviderError(f"gmail {what}: {type(exc).__name__}") from exc
    except BatchError as exc:
        raise TransientProviderError(f"gmail {what}: malformed batch response") from exc


def _headers(message: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in message.get("payload", {}).get("headers", []):
        out.setdefault(str(header.get("name", "")).lower(), str(header.get("value", "")))
    return out


def _addresses(value: str | None) -> list[str]:
    if not value:
        return []
    return [addr for _, addr in getaddresses([value]) if addr]


def to_record(message: dict[str, Any]) -> MessageRecord:
    """A Gmail message resource (format=metadata) as a provider-neutral record."""
    headers = _headers(message)
    internal = message.get("internalDate")
    size = message.get("sizeEstimate")
    return MessageRecord(
        provider_message_id=str(message["id"]),
        thread_id=message.get("threadId"),
        sender=headers.get("from"),
        to=_addresses(headers.get("to")),
        cc=_addresses(headers.get("cc")),
        subject=headers.get("subject"),
        snippet=message.get("snippet"),
        date=datetime.fromtimestamp(int(internal) / 1000, tz=UTC) if internal else None,
        labels=list(message.get("labelIds", [])),
        size=int(size) if size is not None else None,
    )


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- pacing -----------------------------------------------------------------------------------

# Gmail's per-method quota units (developers.google.com/gmail/api/reference/quota); a batch is
# charged part by part.
QUOTA_COSTS = {"users.getProfile": 1, "messages.list": 5, "messages.get": 5, "history.list": 2}
DEFAULT_QUOTA_UNITS_PER_MINUTE = 15_000  # per user; 6,000 for projects created from 2026-05-01


class Pacer:
    """A smooth token bucket keeping one mailbox's calls within `units_per_window`.

    Units refill continuously at `utilization` of the quota rate, and at most `burst` of the
    quota is held at once, so any window of `window_s` sees at most (burst + utilization) of
    the quota (or utilization plus one call, if a call is bigger than the burst), leaving the
    rest as slack for network jitter and the server's own bookkeeping. A charge larger than
    the bucket waits for a full bucket and leaves a debt the next charges wait out, so the
    long-run rate holds whatever the call sizes. `clock` and `sleep` are injectable so tests
    need not wait. One pacer per mailbox: Gmail's quota is per user.
    """

    def __init__(
        self,
        units_per_window: float,
        window_s: float = 60.0,
        *,
        utilization: float = 0.9,
        burst: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if units_per_window <= 0 or window_s <= 0:
            raise ValueError("a pacer needs a positive quota and window")
        if utilization <= 0 or burst <= 0 or utilization + burst > 1:
            raise ValueError("utilization and burst must be positive and add up to at most 1")
        self.units_per_window = units_per_window
        self.window_s = window_s
        self.rate = units_per_window * utilization / window_s  # units per second
        self.capacity = units_per_window * burst
        self.charged = 0.0  # units granted so far
        self.waited = 0.0  # seconds spent waiting so far
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def acquire(self, units: float) -> float:
        """Wait until `units` may be spent, spend them, and return the seconds waited."""
        with self._lock:
            now = self._clock()
            if now > self._stamp:
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
            need = min(units, self.capacity)
            waited = 0.0
            if self._tokens < need:
                waited = (need - self._tokens) / self.rate
                self._sleep(waited)
                # The sleep earned `need`; a clock that ran further earns the excess too, one
                # that ran shorter (an early wake-up) is treated as borrowed time.
                ready = self._stamp + waited
                now = self._clock()
                extra = max(0.0, now - ready) * self.rate
                self._tokens = min(self.capacity, need + extra)
                self._stamp = max(now, ready)
            self._tokens -= units
            self.charged += units
            self.waited += waited
            return waited


# -- resumable full syncs and reusable tokens ---------------------------------------------------


def _checkpoint(history_id: str, page_token: str | None, total: int | None) -> str:
    return json.dumps(
        {"v": 1, "historyId": history_id, "pageToken": page_token, "total": total},
        separators=(",", ":"),
    )


def _parse_checkpoint(checkpoint: str) -> tuple[str, str | None, int | None]:
    """(historyId taken when the sync began, next list page token, messagesTotal)."""
    try:
        data = json.loads(checkpoint)
        history_id, token, total = data["historyId"], data["pageToken"], data["total"]
        if (
            data.get("v") != 1
            or not (isinstance(history_id, str) and history_id.isdigit())
            or not (token is None or (isinstance(token, str) and token))
            or not (total is None or isinstance(total, int))
        ):
            raise ValueError
    except (ValueError, TypeError, KeyError):
        raise CursorExpiredError(
            "gmail checkpoint is not usable; start the full sync over"
        ) from None
    return history_id, token, total


def _auth_subject(address: str, credentials: dict[str, Any]) -> str:
    """Who a token was issued to, without anything secret: the client and the mailbox."""
    if credentials["type"] == "oauth":
        client = str(credentials["client_id"])
    else:
        client = str(credentials["info"].get("client_email", ""))
    return f"{credentials['type']}:{client}:{address.lower()}"


def _seed_token(creds: google.auth.credentials.Credentials, state: str, subject: str) -> bool:
    """Put a stored access token into `creds` when it was issued for `subject`."""
    try:
        data = json.loads(state)
        if data.get("v") != 1 or data.get("for") != subject or not isinstance(data["token"], str):
            return False
        expiry = datetime.fromisoformat(data["expiry"]) if data.get("expiry") else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return False
    if expiry is not None and expiry.tzinfo is not None:
        expiry = expiry.astimezone(UTC).replace(tzinfo=None)  # google-auth's "now" is naive UTC
    creds.token = data["token"]
    creds.expiry = expiry
    return True


class GmailProvider:
    """One Gmail mailbox, read with the gmail.readonly scope.

    Every call is paced to the per-user quota (see Pacer) and a call or batch part refused for
    quota or by a passing server error is retried, honouring Retry-After up to a cap.
    `auth_state` is secret (a live access token): never log it or this provider's credentials.
    """

    name = "gmail"
    # Transient failures of single batch parts are retried here: the rest of the batch succeeded,
    # and failing the whole page for one part would redo all of it. googleapiclient's own retry
    # (num_retries) ignores Retry-After and never retries batch parts, so it is not used.
    part_attempts = 5
    part_backoff_s = 0.25
    max_part_wait_s = 10.0
    # The same for single calls (getProfile, messages.list, history.list).
    call_attempts = 5
    call_backoff_s = 0.25
    max_call_wait_s = 10.0

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
        valid = validate_credentials(credentials)
        self._loan = _TRANSPORTS.borrow(
            (endpoints.ca_bundle, timeout), lambda: _TransportPool(endpoints.ca_bundle, timeout)
        )
        self._lease = _Lease(self._loan.value.checkout())
        try:
            # Token refreshes go through the same transport, so the token endpoint gets the same
            # trust.
            self._creds = _google_credentials(
                address, valid, endpoints, google_auth_httplib2.Request(self._lease)
            )
            self._auth_subject = _auth_subject(address, valid)
            if auth_state and not _seed_token(self._creds, auth_state, self._auth_subject):
                logger.info(
                    "gmail: stored auth state for %s not usable; a token will be fetched", address
                )
            self._seeded_token: str | None = self._creds.token
            self._http = google_auth_httplib2.AuthorizedHttp(self._creds, http=self._lease)
            self._service = build_from_document(
                _discovery_for(endpoints.gmail_api_url), http=self._http
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
        expiry = self._creds.expiry
        return json.dumps(
            {
                "v": 1,
                "for": self._auth_subject,
                "token": token,
                "expiry": expiry.replace(tzinfo=UTC).isoformat() if expiry else None,
            }
        )

    # -- single calls, paced and retried ------------------------------------------------------

    def _call(
        self,
        what: str,
        request: Any,
        on_http_error: Callable[[HttpError], None] | None = None,
    ) -> dict[str, Any]:
        """Execute one request (`what` names a QUOTA_COSTS method): paced, and retried on 429,
        5xx and quota 403 while the wait (Retry-After or backoff) stays under the cap.
        `on_http_error` may raise a more specific error for an HttpError first."""
        for attempt in range(1, self.call_attempts + 1):
            self.pacer.acquire(QUOTA_COSTS[what])
            try:
                with _translated(what):
                    try:
                        result: dict[str, Any] = request.execute()
                        return result
                    except HttpError as exc:
                        if on_http_error is not None:
                            on_http_error(exc)
                        raise
            except TransientProviderError as error:
                if not isinstance(error.__cause__, HttpError) or attempt == self.call_attempts:
                    raise
                delay = max(error.retry_after or 0.0, self.call_backoff_s * 2 ** (attempt - 1))
                if delay > self.max_call_wait_s:
                    raise
                logger.info(
                    "gmail: %s refused (%s); retrying in %.2fs (attempt %d)",
                    what,
                    error,
                    delay,
                    attempt,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- sync -----------------------------------------------------------------------------------

    def full_sync(self, checkpoint: str | None = None) -> Iterator[Page]:
        """Every message, newest first, a page per messages.list page. Each page's checkpoint
        resumes right after it (in any provider instance); the cursor is the history id read
        before the first page, so changes made while listing (or while stopped) are replayed
        by the next increment rather than lost."""
        resumed = checkpoint is not None
        if checkpoint is not None:
            cursor, token, total = _parse_checkpoint(checkpoint)
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
                on_http_error=_stale_page_token if resumed else None,
            )
            resumed = False
            ids = list(dict.fromkeys(m["id"] for m in listing.get("messages", [])))
            token = listing.get("nextPageToken")
            records, gone = self._fetch(ids)
            yield Page(
                upserts=records,
                deletions=gone,
                cursor=None if token else cursor,
                checkpoint=_checkpoint(cursor, token, total),
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
                on_http_error=_expired_history,
            )
            # The first page's historyId is safe: every change up to it is in the listing; later
            # pages may hold newer records, and replaying those next time is harmless.
            if new_cursor is None:
                new_cursor = str(response["historyId"])
            for record in response.get("history", []):
                for key in ("messagesAdded", "labelsAdded", "labelsRemoved"):
                    for entry in record.get(key, []):
                        mid = entry["message"]["id"]
                        if mid not in deleted:
                            changed[mid] = None
                for entry in record.get("messagesDeleted", []):
                    mid = entry["message"]["id"]
                    changed.pop(mid, None)
                    deleted[mid] = None
            token = response.get("nextPageToken")
            if not token:
                break
        ids = list(changed)
        pending_deletions = list(deleted)
        if not ids:
            yield Page(deletions=pending_deletions, cursor=new_cursor)
            return
        chunks = list(_chunks(ids, self.page_size))
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
        records: dict[str, MessageRecord] = {}
        gone: list[str] = []
        for chunk in _chunks(ids, self.batch_size):
            self._fetch_batch(chunk, records, gone)
        return [records[i] for i in ids if i in records], gone

    def _fetch_batch(
        self, ids: list[str], records: dict[str, MessageRecord], gone: list[str]
    ) -> None:
        pending = ids
        for attempt in range(1, self.part_attempts + 1):
            failures = self._run_batch(pending, records)

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
            delay = max(wait, self.part_backoff_s * 2 ** (attempt - 1))
            if attempt == self.part_attempts or delay > self.max_part_wait_s:
                assert last is not None
                raise TransientProviderError(
                    f"{last} on {len(retry)} of {len(ids)} batch parts after {attempt} attempts",
                    retry_after=wait or None,
                ) from last_exc
            logger.info(
                "gmail: retrying %d of %d message fetches in %.2fs (attempt %d)",
                len(retry),
                len(ids),
                delay,
                attempt,
            )
            self._sleep(delay)
            pending = retry

    def _run_batch(self, ids: list[str], records: dict[str, MessageRecord]) -> dict[str, HttpError]:
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

        batch = self._service.new_batch_http_request(callback=collect)
        for mid in ids:
            batch.add(
                self._messages.get(
                    userId="me", id=mid, format="metadata", metadataHeaders=METADATA_HEADERS
                ),
                request_id=mid,
            )
        # Google charges (and throttles) every part of a batch as a call of its own.
        self.pacer.acquire(QUOTA_COSTS["messages.get"] * len(ids))
        try:
            with _translated("batch messages.get"):
                batch.execute()
        except TransientProviderError as error:
            if not isinstance(error.__cause__, HttpError):
                raise
            return {mid: error.__cause__ for mid in ids if mid not in records}
        return failures


def _expired_history(exc: HttpError) -> None:
    if int(exc.resp.status) == 404:
        raise CursorExpiredError("gmail history id expired") from exc


def _stale_page_token(exc: HttpError) -> None:
    if int(exc.resp.status) == 400:
        raise CursorExpiredError("gmail checkpoint page token refused; start over") from exc
