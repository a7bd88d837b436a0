"""Lets mailsync sync Microsoft 365 mailboxes: msal for tokens, Graph message delta for changes.

Delta is per folder: the cursor holds one deltaLink per synced folder. The synced folders are
named ones (well-known names such as "inbox", or folder ids; records are labelled with the name
as given) or, with `folders=None`, every mail folder including child folders (labelled with the
folder id), listed afresh at each sync. Pages are sized with `Prefer: odata.maxpagesize`.

A full sync's pages carry checkpoints to resume from and the folders' totalItemCount sum as
`total_estimate`; `auth_state()` hands out msal's token cache so the next provider for the
mailbox starts with the still-valid token. Folders are fetched on up to 4 threads, never more
than 4 requests in flight per provider (Outlook's per-mailbox limit).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlsplit

import certifi
import httpx
import msal
import requests
from msal.exceptions import MsalServiceError
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

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

APP_SCOPES = ["https://graph.microsoft.com/.default"]
DELEGATED_SCOPES = ["https://graph.microsoft.com/Mail.Read"]
# Only what the index needs; `id` always comes back.
SELECT_FIELDS = (
    "conversationId",
    "subject",
    "bodyPreview",
    "from",
    "sender",
    "toRecipients",
    "ccRecipients",
    "receivedDateTime",
)
CURSOR_VERSION = 1
CHECKPOINT_VERSION = 1
DEFAULT_FOLDERS = ("inbox", "sentitems")
# How long msal itself refuses to repeat a token request that got a 5xx without Retry-After.
_MSAL_THROTTLE_DEFAULT = 5.0
_T = TypeVar("_T")

_CREDENTIAL_FIELDS = {
    "client_credentials": ("tenant_id", "client_id", "client_secret"),
    "refresh_token": ("tenant_id", "client_id", "client_secret", "refresh_token"),
}
# Tenant ids are GUIDs or domain names; they end up in the authority URL path.
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
_AUTH_ERRORS = frozenset(
    {
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "invalid_scope",
        "invalid_resource",
        "invalid_tenant",
        "interaction_required",
        "consent_required",
        "login_required",
        "access_denied",
    }
)
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_SYNC_STATE_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
_AADSTS_RE = re.compile(r"AADSTS\d+")


def validate_credentials(credentials: dict) -> dict:
    """A normalised copy of Microsoft credentials, or ValueError naming the problem (never a value).

    Accepted shapes::

        {"type": "client_credentials", "tenant_id", "client_id", "client_secret"}
        {"type": "refresh_token", "tenant_id", "client_id", "client_secret", "refresh_token"}
    """
    if not isinstance(credentials, dict):
        raise ValueError("Microsoft credentials must be a JSON object")
    kind = credentials.get("type")
    if kind not in _CREDENTIAL_FIELDS:
        raise ValueError(
            "Microsoft credentials 'type' must be one of: " + ", ".join(sorted(_CREDENTIAL_FIELDS))
        )
    required = _CREDENTIAL_FIELDS[kind]
    unknown = sorted(set(credentials) - {"type", *required})
    if unknown:
        raise ValueError(f"unexpected field(s) in Microsoft {kind} credentials: {unknown}")
    normalised: dict[str, str] = {"type": kind}
    for name in required:
        value = credentials.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"Microsoft {kind} credentials need a non-empty string '{name}'")
        normalised[name] = value.strip()
    if not _TENANT_RE.match(normalised["tenant_id"]):
        raise ValueError("Microsoft 'tenant_id' must be a tenant GUID or domain name")
    return normalised


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _caused_by_tls_verification(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(6):  # httpx wraps httpcore, which wraps ssl
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    # Graph may send 7 fractional digits; fromisoformat wants at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _address(recipient: Any) -> str | None:
    if isinstance(recipient, dict):
        email = recipient.get("emailAddress")
        if isinstance(email, dict) and isinstance(email.get("address"), str):
            return email["address"] or None
    return None


def _addresses(recipients: Any) -> list[str]:
    if not isinstance(recipients, list):
        return []
    return [a for a in (_address(r) for r in recipients) if a]


def to_record(item: dict[str, Any], folder: str) -> MessageRecord:
    """A Graph message (delta item) as an index entry; `folder` becomes its only label."""
    return MessageRecord(
        provider_message_id=item["id"],
        thread_id=item.get("conversationId"),
        sender=_address(item.get("from")) or _address(item.get("sender")),
        to=_addresses(item.get("toRecipients")),
        cc=_addresses(item.get("ccRecipients")),
        subject=item.get("subject"),
        snippet=item.get("bodyPreview"),
        date=_parse_datetime(item.get("receivedDateTime")),
        labels=[folder],
        # Graph v1.0's message resource has no size property to map honestly.
        size=None,
    )


class _Throttled(Exception):
    """A 429 (Graph or token endpoint) that may be waited out in-process."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Retryable(Exception):
    """A failure worth a few more tries after a backoff: a Graph 5xx or 408, a timeout, a
    dropped connection, an identity platform outage."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _SyncStateGone(Exception):
    """Graph no longer knows a delta round's state (410 Gone, syncStateNotFound, ...)."""


class _Stopped(Exception):
    """The sync a worker was fetching for has ended; the worker just leaves."""


# --- what the instances of a process share --------------------------------------------
#
# Connections, TLS contexts and tenants' public OpenID configuration; never tokens, token
# caches or msal's memory of failed requests (see _IdentitySession).

# Graph requests in flight at once in a refresh round: 16 mailboxes x 4 requests each. Kept-alive
# connections beyond it would only be closed again.
_GRAPH_KEEPALIVE = 64
_IDENTITY_KEEPALIVE = 32  # token requests are one at a time per mailbox
# A tenant's OpenID configuration names its endpoints and practically never changes; msal keeps
# it a day per application, a process-wide copy less, since it outlives every application.
_DISCOVERY_TTL = 3600.0
_DISCOVERY_PATH = "/.well-known/openid-configuration"

_SSL_CONTEXTS: pools.Shared[ssl.SSLContext] = pools.Shared("microsoft tls contexts")
_GRAPH_POOLS: pools.Pooled[httpx.HTTPTransport] = pools.Pooled(
    "microsoft graph connections", dispose=lambda transport: transport.close()
)
_IDENTITY_POOLS: pools.Pooled[_SharedAdapter] = pools.Pooled(
    "microsoft identity connections", dispose=lambda adapter: adapter.shutdown()
)
_DISCOVERY: pools.Expiring[tuple[bytes, dict[str, str], str | None]] = pools.Expiring(
    "microsoft tenant discovery", ttl=_DISCOVERY_TTL, capacity=1024
)


def _ca_key(ca_bundle: str | None) -> tuple[Any, ...] | None:
    """A CA file as a cache key: a file replaced while the process runs is a new key, so the
    next provider trusts what the file says now, as it did when every provider read it."""
    if not ca_bundle:
        return None
    try:
        stat = os.stat(ca_bundle)
    except OSError:
        return (ca_bundle,)  # loading it fails below, as it always did; nothing is cached
    return (ca_bundle, stat.st_mtime_ns, stat.st_size)


def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext | bool:
    """certifi's roots plus `ca_bundle`; loading them is most of a provider's construction cost."""
    if not ca_bundle:
        return True

    def make() -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=certifi.where())
        context.load_verify_locations(cafile=ca_bundle)
        return context

    return _SSL_CONTEXTS.get(_ca_key(ca_bundle), make)


class _BorrowedTransport(httpx.BaseTransport):
    """An httpx.Client's way into the process's Graph connection pool: the client keeps its own
    headers, timeouts and auth, and closing it leaves the pool to the other clients."""

    def __init__(self, pool: httpx.BaseTransport) -> None:
        self._pool = pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._pool.handle_request(request)

    def close(self) -> None:
        pass


def _graph_pool(
    graph_base: str, ca_bundle: str | None, timeout: float
) -> pools.Loan[httpx.HTTPTransport]:
    def make() -> httpx.HTTPTransport:
        return httpx.HTTPTransport(
            verify=_ssl_context(ca_bundle),
            trust_env=False,
            # No cap on connections: each client was uncapped in effect (4 requests in flight);
            # a shared cap would make one mailbox's requests wait for another's.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=_GRAPH_KEEPALIVE),
        )

    return _GRAPH_POOLS.borrow((graph_base, _ca_key(ca_bundle), timeout), make)


class _SharedAdapter(HTTPAdapter):
    """The process's connections to the identity platform, mounted on every _IdentitySession.
    urllib3 keys its pools by host and TLS settings, so sessions never get each other's
    connections to somewhere else, and requests carry no credentials between them: msal puts
    the client secret and grant in each request's body."""

    def close(self) -> None:
        pass  # a session closes after its mailbox; the pool serves the next one

    def shutdown(self) -> None:
        super().close()


def _identity_pool(ca_bundle: str | None) -> pools.Loan[_SharedAdapter]:
    return _IDENTITY_POOLS.borrow(
        _ca_key(ca_bundle), lambda: _SharedAdapter(pool_maxsize=_IDENTITY_KEEPALIVE)
    )


class _IdentitySession(requests.Session):
    """msal's HTTP client: no environment CA overrides, a default timeout, and a memory of the
    last response's status and Retry-After (msal's error dicts carry neither).

    Connections are the process's (_SharedAdapter), and so is a tenant's OpenID configuration,
    the one answer that is public and the same for everyone: later mailboxes of the tenant skip
    that request. msal's own http_cache stays per instance: it also remembers failed token
    requests, a 429/5xx for seconds under the token URL, client id and scope (and refresh token,
    if any), a 400 for a minute under the exact request. Mailboxes of a tenant synced with its
    app credentials send the very same request, so a shared cache would replay one mailbox's
    outage or refusal to the next without asking the platform."""

    def __init__(self, verify: str | bool, timeout: float, adapter: HTTPAdapter) -> None:
        super().__init__()
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would otherwise replace `verify`.
        self.trust_env = False
        self.verify = verify
        self._timeout = timeout
        self.last_status: int | None = None
        self.last_retry_after: float | None = None
        self.hooks["response"].append(self._remember)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        discovery = (
            str(method).upper() == "GET"
            and not args
            and not kwargs.get("params")
            and urlsplit(str(url)).path.endswith(_DISCOVERY_PATH)
        )
        if not discovery:
            return super().request(method, url, *args, **kwargs)
        # Whose trust fetched it is part of the key: a session that would not trust the server
        # must not get its document.
        key = (_ca_key(self.verify) if isinstance(self.verify, str) else self.verify, str(url))
        known = _DISCOVERY.get(key)
        if known is not None:
            return self._replay(str(url), *known)
        response = super().request(method, url, *args, **kwargs)
        if response.status_code == 200 and _is_openid_configuration(response.content):
            # Failures are never kept: the next mailbox asks again.
            _DISCOVERY.put(key, (response.content, dict(response.headers), response.encoding))
        return response

    def _replay(
        self, url: str, content: bytes, headers: dict[str, str], encoding: str | None
    ) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response.reason = "OK"
        response.url = url
        response.headers = CaseInsensitiveDict(headers)
        response.encoding = encoding
        response._content = content
        self._remember(response)
        return response

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last_status = response.status_code
        self.last_retry_after = _retry_after(response.headers.get("Retry-After"))


def _is_openid_configuration(content: bytes) -> bool:
    """Whether msal can use `content` as a tenant's configuration (else it is not worth keeping)."""
    try:
        document = json.loads(content)
    except ValueError:
        return False
    return isinstance(document, dict) and all(
        isinstance(document.get(name), str) for name in ("token_endpoint", "authorization_endpoint")
    )


@dataclass(frozen=True)
class _FolderTask:
    """One folder's part of a sync run."""

    key: str  # how the cursor, the checkpoint and the records' label name the folder
    link: str  # where this run starts reading it
    fresh: str  # where a new initial round of it starts
    # The link carries stored delta state: if Graph lost it, changes may be lost with it.
    expiring: bool


_END = object()


class _Pipeline:
    """Delta pages of several folders, fetched by worker threads folder by folder (a worker
    takes the next folder when it has finished one) and handed out strictly in folder order.

    Each folder buffers at most `prefetch` pages, so memory stays bounded however far ahead the
    workers could run. The first failure of any worker is raised to the consumer."""

    def __init__(self, tasks: list[_FolderTask], prefetch: int) -> None:
        self.tasks = tasks
        self.queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=prefetch) for _ in tasks]
        self.stop = threading.Event()
        self.workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._claimed = 0
        self.failure: BaseException | None = None

    def halt(self, timeout: float) -> None:
        """Stop the workers and wait for them (one in a request finishes it first)."""
        self.stop.set()
        for worker in self.workers:
            if worker is not threading.current_thread():
                worker.join(timeout=timeout)

    def claim(self) -> int | None:
        with self._lock:
            if self.stop.is_set() or self._claimed >= len(self.tasks):
                return None
            self._claimed += 1
            return self._claimed - 1

    def put(self, index: int, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                self.queues[index].put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = exc

    def take(self, index: int) -> Any:
        while True:
            if self.failure is not None:
                raise self.failure
            try:
                return self.queues[index].get(timeout=0.05)
            except queue.Empty:
                if self.stop.is_set():
                    raise ProviderError("the sync was stopped: its provider was closed") from None


class MicrosoftProvider:
    """One Microsoft 365 mailbox, synced folder by folder with Graph message delta.

    Folders are read concurrently, but never with more than `max_concurrent_requests` Graph
    requests of this instance in flight (Outlook allows an app 4 per mailbox); pages still reach
    the caller one at a time, folder after folder, on the caller's thread.

    Retries: a 429 is waited out when its Retry-After is short (`max_retry_after_wait`), up to
    `max_throttle_retries` times; 5xx, 408, timeouts and dropped connections are retried up to
    `max_transient_retries` times with jittered exponential backoff from `transient_backoff`.
    Past that the failure is a TransientProviderError carrying any Retry-After.
    """

    name = "microsoft"
    max_throttle_retries = 4
    max_retry_after_wait = 5.0
    default_retry_after = 1.0
    max_transient_retries = 5
    transient_backoff = 0.5
    max_concurrent_requests = 4
    prefetch_pages = 2  # pages buffered per folder ahead of the caller

    def __init__(
        self,
        address: str,
        credentials: dict,
        endpoints: ProviderEndpoints,
        *,
        folders: tuple[str, ...] | None = DEFAULT_FOLDERS,
        page_size: int = 100,
        auth_state: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if folders is not None:
            if not folders:
                raise ValueError("at least one folder is needed (None means all folders)")
            if not all(isinstance(f, str) and f.strip() for f in folders):
                raise ValueError("folder names must be non-empty strings")
        if page_size < 1:
            raise ValueError("page_size must be positive")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.address = address
        # None: every mail folder, listed at the start of each sync. A repeated folder would
        # clash in the cursor.
        self.folders = None if folders is None else tuple(dict.fromkeys(folders))
        self.page_size = page_size
        self._credentials = validate_credentials(credentials)
        self._authority = (
            f"{endpoints.microsoft_authority_host.rstrip('/')}/{self._credentials['tenant_id']}"
        )
        self._graph_base = endpoints.graph_api_url.rstrip("/")
        self._graph_origin = httpx.URL(self._graph_base + "/")
        self._user_path = f"/users/{quote(address, safe='@')}"
        self._timeout = timeout
        # Both pools stay open while this instance holds them (until close()).
        self._identity_pool = _identity_pool(endpoints.ca_bundle)
        self._graph_pool = _graph_pool(self._graph_base, endpoints.ca_bundle, timeout)
        self._session = _IdentitySession(
            endpoints.ca_bundle or True, timeout, self._identity_pool.value
        )
        self._http = httpx.Client(
            base_url=self._graph_base,
            transport=_BorrowedTransport(self._graph_pool.value),
            trust_env=False,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            headers={
                "Accept": "application/json",
                # Page size is a preference, never $top (which would cut the round short).
                # Immutable ids survive moves between folders, so a move is not a delete + add.
                "Prefer": f'odata.maxpagesize={page_size}, IdType="ImmutableId"',
            },
        )
        # Every Graph request of this instance holds a slot while it is in flight.
        self._slots = threading.BoundedSemaphore(self.max_concurrent_requests)
        # msal is driven from several threads: one token request at a time, the rest wait for
        # its answer in the cache.
        self._token_lock = threading.RLock()
        self._cache = msal.SerializableTokenCache()
        if auth_state:
            self._load_auth_state(auth_state)
        self._app: msal.ConfidentialClientApplication | None = None
        self._force_refresh = False
        self._last_token: str | None = None
        self._runs: set[_Pipeline] = set()
        self._runs_lock = threading.Lock()

    @staticmethod
    def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext | bool:
        # bench/throughput.py's bare httpx client trusts what the provider trusts.
        return _ssl_context(ca_bundle)

    def _load_auth_state(self, auth_state: str) -> None:
        try:
            if not isinstance(json.loads(auth_state), dict):
                raise ValueError("not a token cache")
            self._cache.deserialize(auth_state)
        except (ValueError, TypeError):
            # Never the content: it holds tokens.
            logger.warning("microsoft: ignoring an unreadable auth state; tokens will be renewed")
            self._cache = msal.SerializableTokenCache()

    # --- MailProvider ------------------------------------------------------------------

    def full_sync(self, checkpoint: str | None = None) -> Iterator[Page]:
        """Every message of the synced folders, folder after folder; deletions are never
        reported (the caller drops what a full sync did not return).

        Every page carries a checkpoint (the folders done with their deltaLinks, the current
        folder and its nextLink) from which `full_sync(checkpoint)` of a new instance continues
        right after that page. An unusable checkpoint raises CursorExpiredError before any
        request: start over without it. Should Graph forget a folder's round meanwhile (410),
        that folder alone is read again from its start, so its earlier pages come again.
        """
        if checkpoint is None:
            folders, estimate = self._plan_full_sync()
            done: dict[str, str] = {}
            current: str | None = None
            next_link: str | None = None
        else:
            folders, done, current, next_link, estimate = self._read_checkpoint(checkpoint)
        tasks = []
        for key in folders:
            if key in done:
                continue
            fresh = self._initial_link(key)
            start = next_link if key == current and next_link else fresh
            tasks.append(_FolderTask(key, start, fresh, expiring=False))

        def cursor() -> str:
            return self._cursor({key: done[key] for key in folders})

        if not tasks:
            # Resumed from the last page's checkpoint: nothing is left to read.
            yield Page(cursor=cursor(), checkpoint=checkpoint, total_estimate=estimate)
            return
        last = tasks[-1].key
        for task, body, page_next, page_delta in self._pages(tasks):
            page = Page(upserts=self._records(body, task.key)[0], total_estimate=estimate)
            if page_next is not None:
                current, next_link = task.key, page_next
            else:
                assert page_delta is not None
                done[task.key] = page_delta
                current = next_link = None
                if task.key == last:
                    page.cursor = cursor()
            page.checkpoint = json.dumps(
                {
                    "version": CHECKPOINT_VERSION,
                    "all_folders": self.folders is None,
                    "folders": folders,
                    "done": done,
                    "current": current,
                    "next": next_link,
                    "estimate": estimate,
                },
                sort_keys=True,
                separators=(",", ":"),
            )
            yield page

    def incremental_sync(self, cursor: str) -> Iterator[Page]:
        """Changes since `cursor`; CursorExpiredError when Graph lost a folder's delta state, or
        (all folders) a synced folder is gone. Folders created since the cursor (all folders)
        are read in full. Deletions come on the last page, minus ids that moved to another
        synced folder within the same run."""
        # A generator, so a bad cursor surfaces while iterating, like every other failure.
        links = self._read_cursor(cursor)
        if self.folders is None:
            order = [folder_id for folder_id, _ in self._list_all_folders()]
            gone = set(links) - set(order)
            if gone:
                raise CursorExpiredError(
                    f"{len(gone)} synced folder(s) no longer exist; a full sync is needed"
                )
        else:
            order = list(self.folders)
        tasks = []
        for key in order:
            fresh = self._initial_link(key)
            if key in links:
                tasks.append(_FolderTask(key, links[key], fresh, expiring=True))
            else:
                tasks.append(_FolderTask(key, fresh, fresh, expiring=False))
        delta_links: dict[str, str] = {}
        # Graph reports a move between two synced folders as a removal from one and an upsert in
        # the other, in whichever order the folders are read. Removals are therefore held back
        # to the last page and dropped for any id this run upserted, so a move never deletes.
        removed: dict[str, None] = {}
        upserted: set[str] = set()
        if not tasks:
            yield Page(cursor=self._cursor({}))
            return
        last = tasks[-1].key
        for task, body, _next, page_delta in self._pages(tasks):
            upserts, removals = self._records(body, task.key)
            upserted.update(r.provider_message_id for r in upserts)
            removed.update(dict.fromkeys(removals))
            page = Page(upserts=upserts)
            if page_delta is not None:
                delta_links[task.key] = page_delta
                if task.key == last:
                    page.deletions = [i for i in removed if i not in upserted]
                    page.cursor = self._cursor({key: delta_links[key] for key in order})
            yield page

    def auth_state(self) -> str | None:
        """msal's token cache, serialized, when it changed since it was loaded or last returned
        (else None). Secret: it holds access and refresh tokens; store it encrypted, never log
        it, and pass it back as `auth_state=` so a still-valid token is used as is."""
        with self._token_lock:
            if not self._cache.has_state_changed:
                return None
            state: str = self._cache.serialize()
            return state

    def close(self) -> None:
        with self._runs_lock:
            runs = list(self._runs)
        for run in runs:
            run.halt(self._timeout + 10)
        self._http.close()
        self._session.close()
        self._graph_pool.release()
        self._identity_pool.release()

    # --- plans, cursors, checkpoints -----------------------------------------------------

    def _folder_path(self, folder: str) -> str:
        return f"{self._user_path}/mailFolders/{quote(folder, safe='')}"

    def _initial_link(self, folder: str) -> str:
        return f"{self._folder_path(folder)}/messages/delta?$select={','.join(SELECT_FIELDS)}"

    def _plan_full_sync(self) -> tuple[list[str], int | None]:
        """The folders to read, in order, and the sum of their totalItemCount (None if any is
        unknown)."""
        if self.folders is None:
            listed = self._list_all_folders()
            folders = [folder_id for folder_id, _ in listed]
            totals = [total for _, total in listed]
        else:
            folders = list(self.folders)
            # Retried like delta requests; what fails them would fail the delta requests too.
            totals = self._map(self._folder_total, folders)
        if any(total is None for total in totals):
            return folders, None
        return folders, sum(t for t in totals if t is not None)

    def _folder_total(self, folder: str) -> int | None:
        body = self._get_json(f"{self._folder_path(folder)}?$select=totalItemCount")
        total = body.get("totalItemCount")
        return total if isinstance(total, int) and total >= 0 else None

    def _list_all_folders(self) -> list[tuple[str, int | None]]:
        """(id, totalItemCount) of every mail folder, child folders included (breadth first);
        hidden folders and search folders (whose messages live in other folders) left out."""
        select = "?$select=displayName,parentFolderId,childFolderCount,totalItemCount"
        found: list[tuple[str, int | None]] = []
        seen: set[str] = set()
        pending = [f"{self._user_path}/mailFolders{select}"]
        while pending:
            collections = self._map(self._read_collection, pending)
            pending = []
            for folders in collections:
                for folder in folders:
                    folder_id = folder.get("id")
                    if not isinstance(folder_id, str) or not folder_id or folder_id in seen:
                        continue
                    seen.add(folder_id)
                    if folder.get("@odata.type") == "#microsoft.graph.mailSearchFolder":
                        continue
                    total = folder.get("totalItemCount")
                    found.append((folder_id, total if isinstance(total, int) else None))
                    children = folder.get("childFolderCount")
                    if not isinstance(children, int) or children > 0:
                        pending.append(f"{self._folder_path(folder_id)}/childFolders{select}")
        return found

    def _read_collection(self, link: str) -> list[dict[str, Any]]:
        """Every item of a Graph collection, following @odata.nextLink."""
        items: list[dict[str, Any]] = []
        next_link: str | None = link
        while next_link is not None:
            body = self._get_json(next_link)
            items.extend(v for v in body.get("value") or [] if isinstance(v, dict))
            found = body.get("@odata.nextLink")
            next_link = self._checked(found) if isinstance(found, str) else None
        return items

    def _cursor(self, delta_links: dict[str, str]) -> str:
        data: dict[str, Any] = {"version": CURSOR_VERSION, "delta_links": delta_links}
        if self.folders is None:
            data["all_folders"] = True
        return json.dumps(data, sort_keys=True)

    def _read_cursor(self, cursor: str) -> dict[str, str]:
        try:
            data = json.loads(cursor)
            links = data["delta_links"]
            ok = data.get("version") == CURSOR_VERSION and isinstance(links, dict)
            all_folders = data.get("all_folders", False) is True
        except (ValueError, TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise CursorExpiredError("unreadable Microsoft cursor; a full sync is needed")
        if all_folders != (self.folders is None) or (
            self.folders is not None and set(links) != set(self.folders)
        ):
            raise CursorExpiredError("the synced folders changed; a full sync is needed")
        for key, link in links.items():
            if not key or not isinstance(link, str) or not self._is_graph_url(link):
                # Never send a token to wherever a stored cursor points.
                raise CursorExpiredError("cursor does not belong to this Graph endpoint")
        return dict(links)

    def _read_checkpoint(
        self, checkpoint: str
    ) -> tuple[list[str], dict[str, str], str | None, str | None, int | None]:
        unusable = CursorExpiredError("unusable Microsoft checkpoint; start the full sync over")
        try:
            data = json.loads(checkpoint)
            folders, done = data["folders"], data["done"]
            current, next_link, estimate = data["current"], data["next"], data["estimate"]
            ok = (
                data["version"] == CHECKPOINT_VERSION
                and data["all_folders"] is (self.folders is None)
                and isinstance(folders, list)
                and all(isinstance(f, str) and f for f in folders)
                and len(set(folders)) == len(folders)
                and isinstance(done, dict)
                and set(done) <= set(folders)
                and all(
                    isinstance(link, str) and self._is_graph_url(link) for link in done.values()
                )
                and (current is None or (current in folders and current not in done))
                and (next_link is None or (current is not None and isinstance(next_link, str)))
                and (next_link is None or self._is_graph_url(next_link))
                and (estimate is None or (isinstance(estimate, int) and estimate >= 0))
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise unusable
        if self.folders is not None and folders != list(self.folders):
            raise CursorExpiredError("the synced folders changed; start the full sync over")
        return folders, dict(done), current, next_link, estimate

    def _is_graph_url(self, link: str) -> bool:
        try:
            url = httpx.URL(link)
        except (httpx.InvalidURL, TypeError):
            return False
        origin = self._graph_origin
        return (
            url.scheme == origin.scheme
            and url.host == origin.host
            and url.port == origin.port
            and url.path.startswith(origin.path)
        )

    def _checked(self, link: str) -> str:
        if not self._is_graph_url(link):
            raise ProviderError("Graph returned a link outside the configured Graph endpoint")
        return link

    @staticmethod
    def _records(body: dict[str, Any], label: str) -> tuple[list[MessageRecord], list[str]]:
        """A delta page's upserts (labelled `label`) and removed ids."""
        upserts: list[MessageRecord] = []
        removed: list[str] = []
        for item in body.get("value") or []:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                continue
            if "@removed" in item:
                removed.append(item["id"])
            else:
                upserts.append(to_record(item, label))
        return upserts, removed

    # --- concurrency -------------------------------------------------------------------

    def _pages(
        self, tasks: list[_FolderTask]
    ) -> Iterator[tuple[_FolderTask, dict[str, Any], str | None, str | None]]:
        """(folder, page body, nextLink, deltaLink) for every delta page of `tasks`, in order."""
        run = _Pipeline(tasks, self.prefetch_pages)
        run.workers = [
            threading.Thread(
                target=self._work, args=(run,), name=f"mailsync-graph-{n}", daemon=True
            )
            for n in range(min(self.max_concurrent_requests, len(tasks)))
        ]
        with self._runs_lock:
            self._runs.add(run)
        for worker in run.workers:
            worker.start()
        try:
            for index, task in enumerate(tasks):
                while (item := run.take(index)) is not _END:
                    body, next_link, delta_link = item
                    yield task, body, next_link, delta_link
        finally:
            # Also when the caller stops early: no worker outlives the run (one in the middle
            # of a request finishes it first, so a new run never meets a stray request).
            run.halt(self._timeout + 10)
            with self._runs_lock:
                self._runs.discard(run)

    def _work(self, run: _Pipeline) -> None:
        try:
            while (index := run.claim()) is not None:
                self._fetch_folder(run, index)
        except _Stopped:
            pass
        except BaseException as exc:
            run.fail(exc)

    def _fetch_folder(self, run: _Pipeline, index: int) -> None:
        task = run.tasks[index]
        link: str | None = task.link
        restarted = False
        while link is not None:
            try:
                body = self._get(link, run.stop)
            except _SyncStateGone as exc:
                if task.expiring:
                    raise CursorExpiredError(str(exc)) from exc
                if restarted:
                    raise TransientProviderError(str(exc)) from exc
                restarted = True
                logger.info("microsoft: a folder's delta round expired (%s); reading it again", exc)
                link = task.fresh
                continue
            next_link, delta_link = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
            item: tuple[dict[str, Any], str | None, str | None]
            if isinstance(next_link, str):
                item = (body, self._checked(next_link), None)
            elif isinstance(delta_link, str):
                item = (body, None, self._checked(delta_link))
            else:
                raise ProviderError("Graph delta page without nextLink or deltaLink")
            run.put(index, item)
            link = item[1]
        run.put(index, _END)

    def _map(self, fn: Callable[[str], _T], items: list[str]) -> list[_T]:
        """fn over items on up to max_concurrent_requests threads, results in order."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        workers = min(self.max_concurrent_requests, len(items))
        with ThreadPoolExecutor(workers, thread_name_prefix="mailsync-graph") as pool:
            return list(pool.map(fn, items))

    # --- Graph HTTP --------------------------------------------------------------------

    def _get_json(self, url: str) -> dict[str, Any]:
        """GET a non-delta Graph URL (retried like any other)."""
        try:
            return self._get(url)
        except _SyncStateGone as exc:
            raise TransientProviderError(str(exc)) from exc

    def _get(self, url: str, stop: threading.Event | None = None) -> dict[str, Any]:
        """GET a Graph URL as JSON, translating failures; 429s and transient failures are
        retried per the class limits. Raises _SyncStateGone for lost delta state."""
        throttled = failures = 0
        while True:
            try:
                return self._get_once(url)
            except _Throttled as exc:
                wait = exc.retry_after if exc.retry_after is not None else self.default_retry_after
                if throttled >= self.max_throttle_retries or wait > self.max_retry_after_wait:
                    raise TransientProviderError(str(exc), retry_after=exc.retry_after) from exc
                throttled += 1
                logger.info("microsoft: throttled (%s), retry %d in %.1fs", exc, throttled, wait)
                # A hair over Retry-After: msal refuses identical token requests until it passes.
                self._pause(wait + 0.05, stop)
            except _Retryable as exc:
                told = exc.retry_after
                if failures >= self.max_transient_retries or (
                    told is not None and told > self.max_retry_after_wait
                ):
                    raise TransientProviderError(str(exc), retry_after=told) from exc
                failures += 1
                wait = self.transient_backoff * 2 ** (failures - 1) * random.uniform(0.5, 1.5)
                if told is not None:
                    wait = max(wait, told + 0.05)
                logger.info("microsoft: %s; retry %d in %.2fs", exc, failures, wait)
                self._pause(wait, stop)

    @staticmethod
    def _pause(seconds: float, stop: threading.Event | None) -> None:
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise _Stopped

    def _get_once(self, url: str) -> dict[str, Any]:
        retried_auth = False
        while True:
            token = self._access_token()
            headers = {"Authorization": f"Bearer {token}", "client-request-id": str(uuid.uuid4())}
            with self._slots:
                try:
                    response = self._http.get(url, headers=headers)
                except httpx.TimeoutException as exc:
                    raise _Retryable("Microsoft Graph timed out") from exc
                except httpx.TransportError as exc:
                    if _caused_by_tls_verification(exc):
                        # A certificate problem is configuration; retrying will not fix it.
                        raise ProviderError("TLS verification failed for Microsoft Graph") from exc
                    raise _Retryable(
                        f"could not reach Microsoft Graph ({type(exc).__name__})"
                    ) from exc
            if response.status_code == 401 and not retried_auth:
                # The token may have been revoked or expired early; get a fresh one once.
                retried_auth = True
                self._drop_access_token(token)
                continue
            if response.status_code == 200:
                try:
                    body = response.json()
                except ValueError as exc:
                    raise _Retryable("Microsoft Graph sent malformed JSON") from exc
                if not isinstance(body, dict):
                    raise _Retryable("Microsoft Graph sent an unexpected body")
                return body
            self._raise_for_graph(response)

    @staticmethod
    def _raise_for_graph(response: httpx.Response) -> NoReturn:
        status = response.status_code
        code, message = "", ""
        try:
            error = response.json().get("error") or {}
            code, message = str(error.get("code") or ""), str(error.get("message") or "")
        except (ValueError, AttributeError):
            pass
        detail = f"Microsoft Graph {status}" + (f" {code}" if code else "")
        if message:
            detail += f": {message[:200]}"
        retry_after = _retry_after(response.headers.get("Retry-After"))
        if status == 410 or code.lower() in _SYNC_STATE_CODES:
            raise _SyncStateGone(detail)
        if status == 429:
            raise _Throttled(detail, retry_after)
        if status in (401, 403):
            raise AuthError(detail)
        if status >= 500 or status == 408:
            raise _Retryable(detail, retry_after)
        raise ProviderError(detail)

    # --- tokens ------------------------------------------------------------------------

    def _msal_app(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            creds = self._credentials
            try:
                # Construction fetches the tenant's OpenID configuration.
                self._app = msal.ConfidentialClientApplication(
                    creds["client_id"],
                    client_credential=creds["client_secret"],
                    authority=self._authority,
                    http_client=self._session,
                    instance_discovery=False,
                    token_cache=self._cache,
                )
            except ValueError as exc:
                status = self._session.last_status
                if status == 429:
                    raise _Throttled(
                        "Microsoft identity platform throttled tenant discovery",
                        self._session.last_retry_after,
                    ) from exc
                if status in (400, 404):
                    raise AuthError(
                        "Microsoft identity platform does not know this tenant"
                    ) from exc
                if status is not None and status >= 500:
                    raise _Retryable(
                        f"Microsoft identity platform tenant discovery failed ({status})",
                        self._session.last_retry_after,
                    ) from exc
                raise ProviderError("invalid Microsoft authority configuration") from exc
            except (MsalServiceError, requests.RequestException) as exc:
                self._raise_identity_unreachable(exc)
        app: msal.ConfidentialClientApplication = self._app
        return app

    def _raise_identity_unreachable(self, exc: Exception) -> NoReturn:
        if isinstance(exc, requests.exceptions.SSLError):
            raise ProviderError(
                "TLS verification failed for the Microsoft identity platform"
            ) from exc
        detail = f"Microsoft identity platform unavailable ({type(exc).__name__})"
        status, retry_after = self._session.last_status, self._session.last_retry_after
        if isinstance(exc, MsalServiceError) and status == 429:
            raise _Throttled(detail, retry_after) from exc
        if isinstance(exc, MsalServiceError) and status is not None and status >= 500:
            # msal answers the same request from its own memory of this failure until
            # Retry-After (or its default) has passed, so retrying sooner would be pointless.
            detail = f"Microsoft identity platform unavailable ({status})"
            wait = retry_after if retry_after is not None else _MSAL_THROTTLE_DEFAULT
            raise _Retryable(detail, wait) from exc
        raise _Retryable(detail) from exc

    def _access_token(self) -> str:
        with self._token_lock:
            app = self._msal_app()
            creds = self._credentials
            try:
                if creds["type"] == "client_credentials":
                    # msal answers from its cache until the token is close to expiry.
                    result = app.acquire_token_for_client(scopes=APP_SCOPES)
                else:
                    result = None
                    accounts = app.get_accounts()
                    if accounts:
                        result = app.acquire_token_silent(
                            DELEGATED_SCOPES,
                            account=accounts[0],
                            force_refresh=self._force_refresh,
                        )
                    if not result or "access_token" not in result:
                        result = app.acquire_token_by_refresh_token(
                            creds["refresh_token"], scopes=DELEGATED_SCOPES
                        )
            except (MsalServiceError, requests.RequestException) as exc:
                self._raise_identity_unreachable(exc)
            self._force_refresh = False
            if isinstance(result, dict) and isinstance(result.get("access_token"), str):
                self._last_token = result["access_token"]
                return self._last_token
            self._raise_for_token_error(result if isinstance(result, dict) else {})

    def _raise_for_token_error(self, result: dict[str, Any]) -> NoReturn:
        error = str(result.get("error") or "unknown_error")
        codes = _AADSTS_RE.findall(str(result.get("error_description") or ""))[:1]
        detail = f"Microsoft identity platform refused the token request: {error}"
        if codes:
            detail += f" ({codes[0]})"
        status = self._session.last_status
        retry_after = self._session.last_retry_after
        if status == 429:
            raise _Throttled(detail, retry_after)
        if error in _AUTH_ERRORS:
            raise AuthError(detail)
        if error in _TRANSIENT_ERRORS or (status is not None and status >= 500):
            # msal answers the same request from its own memory of this failure until
            # Retry-After (or its default) has passed, so waiting less would be pointless.
            raise _Retryable(
                detail, retry_after if retry_after is not None else _MSAL_THROTTLE_DEFAULT
            )
        raise ProviderError(detail)

    def _drop_access_token(self, rejected: str) -> None:
        with self._token_lock:
            if self._app is None or rejected != self._last_token:
                return  # another request has replaced it already
            self._last_token = None
            if self._credentials["type"] == "client_credentials":
                self._app.remove_tokens_for_client()
            else:
                self._force_refresh = True
