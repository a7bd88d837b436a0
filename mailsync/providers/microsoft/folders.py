"""The mail folders a Microsoft sync reads: named ones and their sizes, or every folder there is."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from mailsync.providers.microsoft.records import SELECT_FIELDS

DEFAULT_FOLDERS = ("inbox", "sentitems")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Folders:
    """One mailbox's folders, read through `get_json` (GET a Graph URL, retried) on up to
    `workers` threads; `checked` vets each link Graph returns."""

    user_path: str  # /users/{address}
    get_json: Callable[[str], dict[str, Any]]
    checked: Callable[[str], str]
    workers: int

    def path(self, folder: str) -> str:
        return f"{self.user_path}/mailFolders/{quote(folder, safe='')}"

    def initial_link(self, folder: str) -> str:
        """Where a new delta round of `folder` starts."""
        return f"{self.path(folder)}/messages/delta?$select={','.join(SELECT_FIELDS)}"

    def plan(self, folders: tuple[str, ...] | None) -> tuple[list[str], int | None]:
        """The folders to read (every one, for None), in order, and the sum of their
        totalItemCount (None if any is unknown)."""
        if folders is None:
            listed = self.list_all()
            keys = [folder_id for folder_id, _ in listed]
            totals = [total for _, total in listed]
        else:
            keys = list(folders)
            # Retried like delta requests; what fails them would fail the delta requests too.
            totals = self.map(self._total, keys)
        if any(total is None for total in totals):
            return keys, None
        return keys, sum(t for t in totals if t is not None)

    def _total(self, folder: str) -> int | None:
        body = self.get_json(f"{self.path(folder)}?$select=totalItemCount")
        total = body.get("totalItemCount")
        return total if isinstance(total, int) and total >= 0 else None

    def list_all(self) -> list[tuple[str, int | None]]:
        """(id, totalItemCount) of every mail folder, child folders included (breadth first);
        hidden folders and search folders (whose messages live in other folders) left out."""
        select = "?$select=displayName,parentFolderId,childFolderCount,totalItemCount"
        found: list[tuple[str, int | None]] = []
        seen: set[str] = set()
        pending = [f"{self.user_path}/mailFolders{select}"]
        while pending:
            collections = self.map(self._read_collection, pending)
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
                        pending.append(f"{self.path(folder_id)}/childFolders{select}")
        return found

    def _read_collection(self, link: str) -> list[dict[str, Any]]:
        """Every item of a Graph collection, following @odata.nextLink."""
        items: list[dict[str, Any]] = []
        next_link: str | None = link
        while next_link is not None:
            body = self.get_json(next_link)
            items.extend(v for v in body.get("value") or [] if isinstance(v, dict))
            found = body.get("@odata.nextLink")
            next_link = self.checked(found) if isinstance(found, str) else None
        return items

    def map(self, fn: Callable[[str], _T], items: list[str]) -> list[_T]:
        """fn over items on up to `workers` threads, results in order."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        workers = min(self.workers, len(items))
        with ThreadPoolExecutor(workers, thread_name_prefix="mailsync-graph") as pool:
            return list(pool.map(fn, items))
