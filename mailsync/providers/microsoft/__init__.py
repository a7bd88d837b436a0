"""Lets mailsync sync Microsoft 365 mailboxes: msal for tokens, Graph message delta for changes.

Delta is per folder: the cursor holds one deltaLink per synced folder. The synced folders are
named ones (well-known names such as "inbox", or folder ids; records are labelled with the name
as given) or, with `folders=None`, every mail folder including child folders (labelled with the
folder id), listed afresh at each sync. Pages are sized with `Prefer: odata.maxpagesize`.

A full sync's pages carry checkpoints to resume from and the folders' totalItemCount sum as
`total_estimate`; `auth_state()` hands out msal's token cache so the next provider for the
mailbox starts with the still-valid token. Folders are fetched on up to 4 threads, never more
than 4 requests in flight per provider (Outlook's per-mailbox limit).

credentials  the two accepted credentials shapes, checked and normalised; the scopes
connections  what a process's instances share: TLS contexts, connection pools, discovery
identity     msal's HTTP session (shared connections and tenant discovery, no env overrides)
tokens       access tokens through msal, its token cache as auth state
errors       Graph and identity platform failures: what is waited out, raised, and as what
graph        Graph GETs: in-flight limit, token refresh on 401, the retry policies
folders      which folders a sync reads, their sizes, every folder listed
cursors      cursors and checkpoints, every link checked to stay on the Graph endpoint
pipeline     delta pages fetched on worker threads, handed out in folder order
records      delta items turned into MessageRecords
provider     MicrosoftProvider, the syncs themselves
"""

from mailsync.providers.microsoft.credentials import (
    APP_SCOPES,
    DELEGATED_SCOPES,
    validate_credentials,
)
from mailsync.providers.microsoft.cursors import CHECKPOINT_VERSION, CURSOR_VERSION
from mailsync.providers.microsoft.folders import DEFAULT_FOLDERS
from mailsync.providers.microsoft.graph import THROTTLED, TRANSIENT
from mailsync.providers.microsoft.provider import MicrosoftProvider
from mailsync.providers.microsoft.records import SELECT_FIELDS, to_record

__all__ = [
    "APP_SCOPES",
    "CHECKPOINT_VERSION",
    "CURSOR_VERSION",
    "DEFAULT_FOLDERS",
    "DELEGATED_SCOPES",
    "SELECT_FIELDS",
    "THROTTLED",
    "TRANSIENT",
    "MicrosoftProvider",
    "to_record",
    "validate_credentials",
]
