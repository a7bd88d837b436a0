"""Gmail as a MailProvider: a full listing, then history increments, via Google's own client.

credentials  the credentials document, google-auth objects, stored access tokens
transport    httplib2 transports pooled per process, leases on them, the discovery document
errors       Gmail's failures as provider errors (HTTP statuses, token refusals, connections)
pacing       the per-user quota: method costs and the token bucket pacing a mailbox
paging       resumable full-sync checkpoints, history pages folded into changes
records      message resources turned into MessageRecords
batch        message metadata through batch requests, refused parts retried one by one
provider     GmailProvider, the syncs themselves
"""

from mailsync.providers.gmail.batch import MAX_BATCH_SIZE
from mailsync.providers.gmail.credentials import SCOPES, validate_credentials
from mailsync.providers.gmail.errors import translate_http_error
from mailsync.providers.gmail.pacing import DEFAULT_QUOTA_UNITS_PER_MINUTE, QUOTA_COSTS, Pacer
from mailsync.providers.gmail.paging import HISTORY_TYPES, MAX_PAGE_SIZE
from mailsync.providers.gmail.provider import RETRY, GmailProvider
from mailsync.providers.gmail.records import METADATA_HEADERS, to_record
from mailsync.providers.gmail.transport import MAX_IDLE_TRANSPORTS, preload

__all__ = [
    "DEFAULT_QUOTA_UNITS_PER_MINUTE",
    "HISTORY_TYPES",
    "MAX_BATCH_SIZE",
    "MAX_IDLE_TRANSPORTS",
    "MAX_PAGE_SIZE",
    "METADATA_HEADERS",
    "QUOTA_COSTS",
    "RETRY",
    "SCOPES",
    "GmailProvider",
    "Pacer",
    "preload",
    "to_record",
    "translate_http_error",
    "validate_credentials",
]
