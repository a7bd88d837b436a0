"""The one small protocol every mail provider implements, and the errors it may raise.

Exception hierarchy::

    ProviderError                 anything that went wrong talking to a provider
    ├── TransientProviderError    worth retrying: 429, 5xx, timeouts, connection resets
    ├── AuthError                 credentials refused or revoked; retrying cannot help
    └── CursorExpiredError        the stored cursor is no longer valid; a full sync is needed

Messages never carry provider JSON: a provider turns its wire format into `MessageRecord`s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

# The errors every provider raises (drawn in mailsync/errors.py), importable from here too.
from mailsync.errors import AuthError as AuthError
from mailsync.errors import CursorExpiredError as CursorExpiredError
from mailsync.errors import ProviderError as ProviderError
from mailsync.errors import TransientProviderError as TransientProviderError


@dataclass(frozen=True)
class ProviderEndpoints:
    """Where the providers live; production defaults, pointed at the fakes in tests and demos."""

    google_token_uri: str = "https://oauth2.googleapis.com/token"
    google_auth_uri: str = "https://accounts.google.com/o/oauth2/v2/auth"
    # None: beside the token endpoint (https://oauth2.googleapis.com/revoke).
    google_revoke_uri: str | None = None
    gmail_api_url: str = "https://gmail.googleapis.com/"
    microsoft_authority_host: str = "https://login.microsoftonline.com"
    graph_api_url: str = "https://graph.microsoft.com/v1.0"
    ca_bundle: str | None = None  # extra CA file to trust (the fakes' CA); None = system trust

    @property
    def resolved_google_revoke_uri(self) -> str:
        if self.google_revoke_uri:
            return self.google_revoke_uri
        return self.google_token_uri.rstrip("/").rsplit("/", 1)[0] + "/revoke"


@dataclass(frozen=True)
class ProviderOptions:
    """How hard and how wide to sync: the quota to pace Gmail calls to, Graph folders and page."""

    gmail_quota_units_per_minute: int = 15_000
    # Gmail's quota window is a minute; a shorter one only time-scales tests and benchmarks.
    gmail_quota_window_seconds: float = 60.0
    microsoft_folders: tuple[str, ...] | None = ("inbox", "sentitems")  # None: every folder
    microsoft_page_size: int = 100


@dataclass(frozen=True)
class MessageRecord:
    """One message's index entry, provider-neutral."""

    provider_message_id: str
    thread_id: str | None
    sender: str | None
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    subject: str | None = None
    snippet: str | None = None
    date: datetime | None = None  # timezone-aware UTC
    labels: list[str] = field(default_factory=list)  # Gmail label ids, or the Graph folder
    size: int | None = None


@dataclass(frozen=True)
class FolderRemoval:
    """A message one folder reported gone (Graph's `@removed`: delta is per folder). It may
    only have moved to another synced folder, reported there before or after, so the index
    takes `label` (the label that folder gives its messages) off the message and deletes it
    only if no label is left: never when another folder holds it."""

    provider_message_id: str
    label: str


@dataclass
class Page:
    """A slice of a sync: messages to upsert, ids to delete whatever their labels (`deletions`)
    or only from one folder (`removals`); `cursor` is set on the last page.

    `folder_labels` (Graph): labels are the folders that reported a message, each folder's
    changes a stream of its own. An upsert then adds its labels to the message's instead of
    replacing them, and only a removal takes one off: a message moved while a sync read its
    folders may be reported by the folder read before the move as well as the one read after,
    in any order, and is filed under both until the stale one reports its removal.

    During a full sync every page also carries `checkpoint`: opaque provider state from which
    `full_sync(checkpoint)` continues right after this page, so a sync whose process died
    resumes instead of starting over; and `total_estimate`, the provider's idea of how many
    messages the mailbox holds, when it has one (for progress reporting).
    """

    upserts: list[MessageRecord] = field(default_factory=list)
    deletions: list[str] = field(default_factory=list)
    removals: list[FolderRemoval] = field(default_factory=list)
    folder_labels: bool = False
    cursor: str | None = None
    checkpoint: str | None = None
    total_estimate: int | None = None


class MailProvider(Protocol):
    """One connected mailbox at one provider."""

    name: str

    def full_sync(self, checkpoint: str | None = None) -> Iterator[Page]:
        """Every message in the mailbox (after `checkpoint`, when resuming); the last page
        carries the cursor for later increments."""
        ...

    def incremental_sync(self, cursor: str) -> Iterator[Page]:
        """Changes since `cursor`; raises CursorExpiredError when the cursor is stale."""
        ...

    def auth_state(self) -> str | None:
        """Secret token state worth keeping between syncs (msal's serialized token cache, or
        Google's access token and expiry), to be passed back as `auth_state=` next time so a
        sync need not ask the token endpoint again; None when nothing changed. The caller
        stores it encrypted."""
        ...

    def close(self) -> None: ...
