"""MicrosoftProvider: msal for tokens, Graph message delta per folder for changes."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from mailsync.providers.base import (
    CursorExpiredError,
    FolderRemoval,
    Page,
    ProviderEndpoints,
    TransientProviderError,
)
from mailsync.providers.microsoft.connections import ssl_context
from mailsync.providers.microsoft.credentials import validate_credentials
from mailsync.providers.microsoft.cursors import Cursors
from mailsync.providers.microsoft.errors import _SyncStateGone
from mailsync.providers.microsoft.folders import DEFAULT_FOLDERS, Folders
from mailsync.providers.microsoft.graph import THROTTLED, TRANSIENT, Graph
from mailsync.providers.microsoft.pipeline import DeltaPage, FolderTask, Pipeline, _Stopped
from mailsync.providers.microsoft.records import delta_records
from mailsync.providers.microsoft.tokens import Tokens


class MicrosoftProvider:
    """One Microsoft 365 mailbox, synced folder by folder with Graph message delta.

    Folders are read concurrently, but never with more than `max_concurrent_requests` Graph
    requests of this instance in flight (Outlook allows an app 4 per mailbox); pages still reach
    the caller one at a time, folder after folder, on the caller's thread.

    Retries: a 429 is waited out per `throttle_retry` (when its Retry-After is short), 5xx,
    408, timeouts and dropped connections per `transient_retry` (jittered exponential
    backoff); each counts its own attempts. Past them the failure is a TransientProviderError
    carrying any Retry-After.
    """

    name = "microsoft"
    throttle_retry = THROTTLED
    transient_retry = TRANSIENT
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
        self._tokens = Tokens(
            self._credentials, self._authority, endpoints.ca_bundle, timeout, auth_state
        )
        self._graph = Graph(
            self._graph_base,
            endpoints.ca_bundle,
            timeout,
            page_size,
            self._tokens,
            self.max_concurrent_requests,
        )
        self._cursors = Cursors(self.folders, self._graph_origin)
        self._folders = Folders(
            self._user_path, self._get_json, self._cursors.checked, self.max_concurrent_requests
        )
        self._runs: set[Pipeline] = set()
        self._runs_lock = threading.Lock()

    @staticmethod
    def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext | bool:
        # bench/throughput.py's bare httpx client trusts what the provider trusts.
        return ssl_context(ca_bundle)

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
            folders, estimate = self._folders.plan(self.folders)
            done: dict[str, str] = {}
            current: str | None = None
            next_link: str | None = None
        else:
            folders, done, current, next_link, estimate = self._cursors.read_checkpoint(checkpoint)
        tasks = []
        for key in folders:
            if key in done:
                continue
            fresh = self._initial_link(key)
            start = next_link if key == current and next_link else fresh
            tasks.append(FolderTask(key, start, fresh, expiring=False))

        def cursor() -> str:
            return self._cursors.cursor({key: done[key] for key in folders})

        if not tasks:
            # Resumed from the last page's checkpoint: nothing is left to read.
            yield Page(cursor=cursor(), checkpoint=checkpoint, total_estimate=estimate)
            return
        last = tasks[-1].key
        for task, body, page_next, page_delta in self._pages(tasks):
            upserts = delta_records(body, task.key)[0]
            page = Page(upserts=upserts, folder_labels=True, total_estimate=estimate)
            if page_next is not None:
                current, next_link = task.key, page_next
            else:
                assert page_delta is not None
                done[task.key] = page_delta
                current = next_link = None
                if task.key == last:
                    page.cursor = cursor()
            page.checkpoint = self._cursors.checkpoint(folders, done, current, next_link, estimate)
            yield page

    def incremental_sync(self, cursor: str) -> Iterator[Page]:
        """Changes since `cursor`; CursorExpiredError when Graph lost a folder's delta state, or
        (all folders) a synced folder is gone. Folders created since the cursor (all folders)
        are read in full. Removals come on the last page, each scoped to the folder that
        reported it: a move into another synced folder, reported in this run or another,
        never deletes."""
        # A generator, so a bad cursor surfaces while iterating, like every other failure.
        links = self._cursors.read_cursor(cursor)
        if self.folders is None:
            order = [folder_id for folder_id, _ in self._folders.list_all()]
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
                tasks.append(FolderTask(key, links[key], fresh, expiring=True))
            else:
                tasks.append(FolderTask(key, fresh, fresh, expiring=False))
        delta_links: dict[str, str] = {}
        # Graph reports a move between two synced folders as a removal from one and an upsert in
        # the other: in one run, or in two when the sync read one folder before the move and
        # the other after it (then a run may even see it in both). So labels are folder
        # claims (Page.folder_labels): an upsert adds its folder, a removal takes only its own
        # folder off. Removals are held back to the last page so a move reported in one run is
        # one update, not a delete then an add.
        removed: dict[FolderRemoval, None] = {}
        if not tasks:
            yield Page(cursor=self._cursors.cursor({}))
            return
        last = tasks[-1].key
        for task, body, _next, page_delta in self._pages(tasks):
            upserts, removals = delta_records(body, task.key)
            removed.update(dict.fromkeys(removals))
            page = Page(upserts=upserts, folder_labels=True)
            if page_delta is not None:
                delta_links[task.key] = page_delta
                if task.key == last:
                    page.removals = list(removed)
                    page.cursor = self._cursors.cursor({key: delta_links[key] for key in order})
            yield page

    def auth_state(self) -> str | None:
        """msal's token cache, serialized, when it changed since it was loaded or last returned
        (else None). Secret: it holds access and refresh tokens; store it encrypted, never log
        it, and pass it back as `auth_state=` so a still-valid token is used as is."""
        return self._tokens.auth_state()

    def close(self) -> None:
        with self._runs_lock:
            runs = list(self._runs)
        for run in runs:
            run.halt(self._timeout + 10)
        self._graph.close()
        self._tokens.close()

    # --- folders -----------------------------------------------------------------------

    def _initial_link(self, folder: str) -> str:
        # bench/throughput.py reads delta pages with a bare client from here.
        return self._folders.initial_link(folder)

    # --- concurrency -------------------------------------------------------------------

    def _pages(self, tasks: list[FolderTask]) -> Iterator[DeltaPage]:
        """(folder, page body, nextLink, deltaLink) for every delta page of `tasks`, in order."""
        run = Pipeline(tasks, self.prefetch_pages, self._get, self._cursors.checked)
        with self._runs_lock:
            self._runs.add(run)
        run.start(min(self.max_concurrent_requests, len(tasks)))
        try:
            yield from run.pages()
        finally:
            # Also when the caller stops early: no worker outlives the run (one in the middle
            # of a request finishes it first, so a new run never meets a stray request).
            run.halt(self._timeout + 10)
            with self._runs_lock:
                self._runs.discard(run)

    # --- Graph HTTP and tokens ---------------------------------------------------------

    def _get_json(self, url: str) -> dict[str, Any]:
        """GET a non-delta Graph URL (retried like any other)."""
        try:
            return self._get(url)
        except _SyncStateGone as exc:
            raise TransientProviderError(str(exc)) from exc

    def _get(self, url: str, stop: threading.Event | None = None) -> dict[str, Any]:
        """GET a Graph URL as JSON, retried per `throttle_retry` and `transient_retry`; a wait
        ends early, with _Stopped, once `stop` is set. Raises _SyncStateGone for lost delta
        state."""
        policies = (self.throttle_retry, self.transient_retry)
        return self._graph.get(url, policies, sleep=lambda seconds: self._pause(seconds, stop))

    @staticmethod
    def _pause(seconds: float, stop: threading.Event | None) -> None:
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise _Stopped

    def _access_token(self) -> str:
        return self._tokens.access_token()
