"""Microsoft cursors and checkpoints: a deltaLink per folder, each checked to be on Graph."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from mailsync.providers.base import CursorExpiredError, ProviderError

CURSOR_VERSION = 1
CHECKPOINT_VERSION = 1

# A full sync's place: (folders in order, deltaLinks of those done, the current folder, its
# nextLink, the size estimate).
Checkpoint = tuple[list[str], dict[str, str], str | None, str | None, int | None]


@dataclass(frozen=True)
class Cursors:
    """Reads and writes the cursors and checkpoints of one provider's folder choice: named
    `folders`, or None for every folder. Every link in them must point at `origin`, the Graph
    endpoint: a stored cursor never gets a token sent elsewhere."""

    folders: tuple[str, ...] | None
    origin: httpx.URL

    def cursor(self, delta_links: dict[str, str]) -> str:
        data: dict[str, Any] = {"version": CURSOR_VERSION, "delta_links": delta_links}
        if self.folders is None:
            data["all_folders"] = True
        return json.dumps(data, sort_keys=True)

    def read_cursor(self, cursor: str) -> dict[str, str]:
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
            if not key or not isinstance(link, str) or not self.is_graph_url(link):
                # Never send a token to wherever a stored cursor points.
                raise CursorExpiredError("cursor does not belong to this Graph endpoint")
        return dict(links)

    def checkpoint(
        self,
        folders: list[str],
        done: dict[str, str],
        current: str | None,
        next_link: str | None,
        estimate: int | None,
    ) -> str:
        return json.dumps(
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

    def read_checkpoint(self, checkpoint: str) -> Checkpoint:
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
                and all(isinstance(link, str) and self.is_graph_url(link) for link in done.values())
                and (current is None or (current in folders and current not in done))
                and (next_link is None or (current is not None and isinstance(next_link, str)))
                and (next_link is None or self.is_graph_url(next_link))
                and (estimate is None or (isinstance(estimate, int) and estimate >= 0))
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise unusable
        if self.folders is not None and folders != list(self.folders):
            raise CursorExpiredError("the synced folders changed; start the full sync over")
        return folders, dict(done), current, next_link, estimate

    def is_graph_url(self, link: str) -> bool:
        try:
            url = httpx.URL(link)
        except (httpx.InvalidURL, TypeError):
            return False
        origin = self.origin
        return (
            url.scheme == origin.scheme
            and url.host == origin.host
            and url.port == origin.port
            and url.path.startswith(origin.path)
        )

    def checked(self, link: str) -> str:
        if not self.is_graph_url(link):
            raise ProviderError("Graph returned a link outside the configured Graph endpoint")
        return link
