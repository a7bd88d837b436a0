"""Gmail as a MailProvider: a full listing, then history increments, via Google's own client."""

from __future__ import annotations

import functools
import json
import logging
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

import google.auth.exceptions
import google.auth.transport
import google_auth_httplib2
import httplib2
from google.oauth2 import service_account
from google.oauth2.credentials import Credentials as OAuthCredentials
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import BatchError, HttpError

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


def _discovery_for(api_url: str) -> dict[str, Any]:
    """The bundled discovery document pointed at `api_url`; the batch URL is derived from
    rootUrl + batchPath, which client_options' api_endpoint would leave at production."""
    root = api_url.rstrip("/") + "/"
    doc: dict[str, Any] = json.loads(_static_discovery())
    doc.update(rootUrl=root, baseUrl=root, mtlsRootUrl=root, batchPath="batch/gmail/v1")
    return doc


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


class GmailProvider:
    """One Gmail mailbox, read with the gmail.readonly scope."""

    name = "gmail"
    # Transient failures of single batch parts are retried here: the rest of the batch succeeded,
    # and failing the whole page for one part would redo all of it.
    part_attempts = 4
    part_backoff_s = 0.25
    max_part_wait_s = 10.0

    def __init__(
        self,
        address: str,
        credentials: dict[str, Any],
        endpoints: ProviderEndpoints,
        *,
        page_size: int = 500,
        batch_size: int = 50,
        timeout: float = 30.0,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be within 1..{MAX_PAGE_SIZE}")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be within 1..{MAX_BATCH_SIZE}")
        self.address = address
        self.page_size = page_size
        self.batch_size = batch_size
        # An explicit ca_certs wins over HTTPLIB2_CA_CERTS and friends in the environment; the same
        # Http object carries token refreshes, so the token endpoint gets the same trust.
        transport = httplib2.Http(ca_certs=endpoints.ca_bundle, timeout=timeout)
        google_creds = _google_credentials(
            address,
            validate_credentials(credentials),
            endpoints,
            google_auth_httplib2.Request(transport),
        )
        self._http = google_auth_httplib2.AuthorizedHttp(google_creds, http=transport)
        self._service = build_from_document(
            _discovery_for(endpoints.gmail_api_url), http=self._http
        )
        self._users = self._service.users()

    def __enter__(self) -> GmailProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _execute(self, what: str, request: Any) -> dict[str, Any]:
        with _translated(what):
            result: dict[str, Any] = request.execute()
            return result

    # -- sync -----------------------------------------------------------------------------------

    def full_sync(self) -> Iterator[Page]:
        # The history id is read before listing, so whatever changes during the listing is
        # replayed by the next increment rather than lost.
        profile = self._execute("users.getProfile", self._users.getProfile(userId="me"))
        cursor = str(profile["historyId"])
        token: str | None = None
        while True:
            listing = self._execute(
                "messages.list",
                self._users.messages().list(
                    userId="me",
                    maxResults=self.page_size,
                    pageToken=token,
                    includeSpamTrash=True,  # history reports spam/trash too; the index mirrors it
                ),
            )
            ids = list(dict.fromkeys(m["id"] for m in listing.get("messages", [])))
            token = listing.get("nextPageToken")
            records, gone = self._fetch(ids)
            yield Page(upserts=records, deletions=gone, cursor=None if token else cursor)
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
            request = self._users.history().list(
                userId="me",
                startHistoryId=cursor,
                historyTypes=HISTORY_TYPES,
                maxResults=MAX_PAGE_SIZE,
                pageToken=token,
            )
            with _translated("history.list"):
                try:
                    response: dict[str, Any] = request.execute()
                except HttpError as exc:
                    if int(exc.resp.status) == 404:
                        raise CursorExpiredError("gmail history id expired") from exc
                    raise
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
            time.sleep(delay)
            pending = retry

    def _run_batch(self, ids: list[str], records: dict[str, MessageRecord]) -> dict[str, HttpError]:
        """One batch request of messages.get; fills `records`, returns the failed parts."""
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
                self._users.messages().get(
                    userId="me", id=mid, format="metadata", metadataHeaders=METADATA_HEADERS
                ),
                request_id=mid,
            )
        with _translated("batch messages.get"):
            batch.execute()
        return failures
