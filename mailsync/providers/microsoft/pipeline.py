"""Delta pages of several folders fetched on worker threads, handed out strictly in folder order."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mailsync.providers.base import CursorExpiredError, ProviderError, TransientProviderError
from mailsync.providers.microsoft.errors import _SyncStateGone

logger = logging.getLogger(__package__)

# (the folder's task, the page's body, its nextLink, its deltaLink): one of the links is None.
DeltaPage = tuple["FolderTask", dict[str, Any], str | None, str | None]


class _Stopped(Exception):
    """The sync a worker was fetching for has ended; the worker just leaves."""


@dataclass(frozen=True)
class FolderTask:
    """One folder's part of a sync run."""

    key: str  # how the cursor, the checkpoint and the records' label name the folder
    link: str  # where this run starts reading it
    fresh: str  # where a new initial round of it starts
    # The link carries stored delta state: if Graph lost it, changes may be lost with it.
    expiring: bool


_END = object()


class Pipeline:
    """Delta pages of several folders, fetched by worker threads folder by folder (a worker
    takes the next folder when it has finished one) and handed out strictly in folder order.

    Each folder buffers at most `prefetch` pages, so memory stays bounded however far ahead the
    workers could run. The first failure of any worker is raised to the consumer."""

    def __init__(
        self,
        tasks: list[FolderTask],
        prefetch: int,
        fetch: Callable[[str, threading.Event], dict[str, Any]],
        checked: Callable[[str], str],
    ) -> None:
        """`fetch` GETs a delta link (giving up, with _Stopped, once the event is set);
        `checked` vets a link Graph returned."""
        self.tasks = tasks
        self.queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=prefetch) for _ in tasks]
        self.stop = threading.Event()
        self.workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._claimed = 0
        self.failure: BaseException | None = None
        self._fetch = fetch
        self._checked = checked

    def start(self, workers: int) -> None:
        self.workers = [
            threading.Thread(target=self._work, name=f"mailsync-graph-{n}", daemon=True)
            for n in range(workers)
        ]
        for worker in self.workers:
            worker.start()

    def pages(self) -> Iterator[DeltaPage]:
        """Every delta page of the tasks, folder after folder, on the caller's thread."""
        for index, task in enumerate(self.tasks):
            while (item := self.take(index)) is not _END:
                body, next_link, delta_link = item
                yield task, body, next_link, delta_link

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

    # -- the workers' side --------------------------------------------------------------

    def _work(self) -> None:
        try:
            while (index := self.claim()) is not None:
                self._fetch_folder(index)
        except _Stopped:
            pass
        except BaseException as exc:
            self.fail(exc)

    def _fetch_folder(self, index: int) -> None:
        task = self.tasks[index]
        link: str | None = task.link
        restarted = False
        while link is not None:
            try:
                body = self._fetch(link, self.stop)
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
            self.put(index, item)
            link = item[1]
        self.put(index, _END)
