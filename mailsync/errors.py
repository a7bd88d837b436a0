"""Every error mailsync raises on purpose, its code, and what each code becomes at the edges.

Each class carries a `code`: the `error.code` of an API answer and of a failed job alike.
The API translates any of them through `HTTP_STATUS` (mailsync/api/errors.py); a sync job
records the code of its first failed mailbox through `job_error_code` (every code a job can
end with, these and what became of its flow run, is in `JOB_ERRORS`)
(mailsync/core/jobs/outcomes.py, for the sync flow and refresh rounds alike).

    MailsyncError                         internal_error
    ├── NotFoundError                     not_found
    │   ├── UnknownWorkspaceError
    │   └── JobNotFoundError
    ├── NoMailboxError                    insufficient_permissions: nothing of that kind to sync
    ├── OAuthFlowError                    oauth_flow_failed: a consent refused (its `error`)
    ├── SyncInProgressError               sync_in_progress: another full sync holds the provider
    │   ├── MailboxBusyError                  another sync held the mailbox past our wait
    │   ├── BuildSupersededError              another sync took over this one's index build
    │   ├── TurnLapsedError                   this sync's turn of the mailbox lapsed (retried)
    │   ├── CredentialsChangedError           the mailbox was re-connected mid-sync (retried)
    │   └── MailboxSyncingError               a disconnect while a sync of the mailbox runs
    ├── RateLimitedError                  rate_limited: the on-demand quota (retry_after)
    ├── IdempotencyError
    │   ├── InvalidIdempotencyKey         invalid_request
    │   ├── IdempotencyKeyReused          idempotency_key_reused
    │   └── IdempotencyKeyInUse           idempotency_key_in_use
    ├── PrefectUnavailableError           service_unavailable: Prefect could not be asked, or
    │                                         refused; transient (a sync task retries it)
    ├── JobEndedError                     job_ended: a run for a job that already ended
    ├── MailboxGoneError                  mailbox_disconnected: disconnected while queued
    ├── CredentialsUnreadableError        credentials_unreadable: no key opens them
    ├── InvalidInputError (ValueError)    invalid_request
    │   ├── UnsafeUrlError                    a webhook URL that would reach inside
    │   ├── UnknownEventTypeError             a webhook event type we do not send
    │   ├── EndpointLimitError                a workspace's webhook endpoints are all used
    │   ├── SearchInputError                  a message search's q, filter or cursor (`param`)
    │   ├── ConsentInputError                 a consent flow's provider, redirect_uri... (`param`)
    │   └── UnknownStateError                 a consent callback whose state names no flow
    ├── WebhookVerificationError          webhook_verification_failed (for receivers)
    ├── PushVerificationError             invalid_push_token: a push not proven ours (401)
    ├── ConfigurationError (RuntimeError) configuration_error
    ├── StackError                        stack_error: a local-stack process failed
    └── ProviderError                     provider_error (mailsync/providers/base.py)
        ├── TransientProviderError            provider_unavailable (retry_after)
        ├── AuthError                         provider_auth_failed
        │   └── ReauthRequiredError               the grant is gone (invalid_grant, a 401
        │                                             after a refresh): the mailbox needs
        │                                             re-authorization
        └── CursorExpiredError                cursor_expired

Anything else raised in a sync is a bug: `internal_error`, its message the exception's type
only (a message could carry a secret).
"""

from __future__ import annotations

from typing import Any, ClassVar


class MailsyncError(Exception):
    """Base of every error mailsync raises on purpose."""

    code: ClassVar[str] = "internal_error"
    # Seconds a caller should wait before trying again, when that is known (Retry-After).
    retry_after: float | None = None

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    @property
    def public_message(self) -> str:
        """What a caller may read: the message, unless the class says it is internal."""
        return self.message

    def details(self) -> dict[str, Any]:
        """Fields an API error body carries besides code and message."""
        return {}


class NotFoundError(MailsyncError):
    code = "not_found"


class UnknownWorkspaceError(NotFoundError):
    pass


class JobNotFoundError(NotFoundError):
    pass


class NoMailboxError(MailsyncError):
    """The workspace has no connected mailbox for what was asked."""

    code = "insufficient_permissions"


class SyncInProgressError(MailsyncError):
    """Another full sync of the workspace's provider is queued or running (`job_id` when known)."""

    code = "sync_in_progress"

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id

    def details(self) -> dict[str, Any]:
        return {"job_id": self.job_id}


class MailboxBusyError(SyncInProgressError):
    """Another sync of the mailbox held its turn for longer than this one would wait."""


class BuildSupersededError(SyncInProgressError):
    """Another sync of the mailbox switched or restarted the index build this one was writing
    (this one's turn lapsed meanwhile): it stops without touching the index."""


class TurnLapsedError(SyncInProgressError):
    """The sync's turn of the mailbox lapsed (its lease could not be renewed): it stops before
    writing again, since another sync may hold the turn now. Worth retrying: the retry waits
    for the turn and resumes from what is stored."""


class CredentialsChangedError(SyncInProgressError):
    """The mailbox was re-connected (new credentials, perhaps another account) while this sync
    ran on the old ones: it stops before writing again. Worth retrying: the retry reads the new
    credentials and starts the mailbox afresh."""


class RateLimitedError(MailsyncError):
    """The workspace used its on-demand syncs of the window; `retry_after` in whole seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after: int = retry_after


class IdempotencyError(MailsyncError):
    """Base of every Idempotency-Key refusal."""


class InvalidIdempotencyKey(IdempotencyError):
    """The header is not a UUID."""

    code = "invalid_request"


class IdempotencyKeyReused(IdempotencyError):
    """The key was first used with another request body."""

    code = "idempotency_key_reused"


class IdempotencyKeyInUse(IdempotencyError):
    """The key's first request is still running after the wait."""

    code = "idempotency_key_in_use"
    retry_after = 1


class PrefectUnavailableError(MailsyncError):
    """Prefect could not be reached, refused a call, or would not enforce a limit."""

    code = "service_unavailable"
    retry_after = 5

    @property
    def public_message(self) -> str:
        return "the sync could not be scheduled; retry shortly"


class MailboxSyncingError(SyncInProgressError):
    """A mailbox cannot be disconnected while a sync of it is queued or running (`job_id`)."""


class OAuthFlowError(MailsyncError):
    """A consent flow that cannot go on; `error` is the OAuth error code the callback
    redirects with (RFC 6749 4.1.2.1 names, plus mailsync's own), the message its
    error_description. Never a token or a code in either."""

    code = "oauth_flow_failed"

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


class JobEndedError(MailsyncError):
    code = "job_ended"


class MailboxGoneError(MailsyncError):
    """The mailbox was disconnected while a job for it was queued."""

    code = "mailbox_disconnected"


class CredentialsUnreadableError(MailsyncError):
    """The stored credentials cannot be decrypted with the configured keys."""

    code = "credentials_unreadable"


class InvalidInputError(MailsyncError, ValueError):
    code = "invalid_request"


class UnsafeUrlError(InvalidInputError):
    """A webhook URL that resolves to a private, loopback or otherwise internal address."""


class UnknownEventTypeError(InvalidInputError):
    """A webhook subscription to an event type mailsync does not send."""


class EndpointLimitError(InvalidInputError):
    """The workspace has as many webhook endpoints as it may have."""


class SearchInputError(InvalidInputError):
    """A message search parameter that cannot be used; `param` names it."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class ConsentInputError(InvalidInputError):
    """A consent flow that cannot start as asked (POST /v1/mailboxes/connect); `param`."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class UnknownStateError(InvalidInputError):
    """The consent callback's state is missing, or no flow has it (forged, or from another
    server): there is no trusted redirect_uri to send the user to."""


class WebhookVerificationError(MailsyncError):
    """A webhook delivery whose signature or timestamp does not check out."""

    code = "webhook_verification_failed"


class PushVerificationError(MailsyncError):
    """A Gmail push whose OIDC token does not prove our Pub/Sub subscription sent it."""

    code = "invalid_push_token"


class ConfigurationError(MailsyncError, RuntimeError):
    code = "configuration_error"


class StackError(MailsyncError):
    code = "stack_error"


class ProviderError(MailsyncError):
    """A provider call failed; `code` is a short machine-readable reason."""

    code = "provider_error"


class TransientProviderError(ProviderError):
    code = "provider_unavailable"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthError(ProviderError):
    code = "provider_auth_failed"


class ReauthRequiredError(AuthError):
    """The provider no longer honours the mailbox's grant (a refresh answered invalid_grant,
    or the API answered 401 with a freshly refreshed token): only the user's consent again
    (POST /v1/mailboxes/connect with its mailbox_id) can fix it, so retrying is pointless."""


class CursorExpiredError(ProviderError):
    code = "cursor_expired"


# The HTTP status of every code an API answer can carry. tests/unit/test_errors.py checks that
# each error class's code has a row (or is in NOT_ANSWERED).
HTTP_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_push_token": 401,
    "insufficient_permissions": 403,
    "not_found": 404,
    "sync_in_progress": 409,
    "idempotency_key_in_use": 409,
    "idempotency_key_reused": 422,
    "rate_limited": 429,
    "internal_error": 500,
    "service_unavailable": 503,
}

# Codes no API answer carries: they end a job, or stop a process.
NOT_ANSWERED: frozenset[str] = frozenset(
    {
        "job_ended",
        "mailbox_disconnected",
        "credentials_unreadable",
        "webhook_verification_failed",
        "configuration_error",
        "stack_error",
        "provider_error",
        "provider_unavailable",
        "provider_auth_failed",
        "cursor_expired",
        "oauth_flow_failed",
    }
)


# Every code a failed job's `error.code` can carry, and what it means (the README's table).
JOB_ERRORS: dict[str, str] = {
    "provider_auth_failed": "the provider refused the mailbox's credentials; reconnect it",
    "provider_unavailable": "the provider kept failing or throttling past the retries",
    "provider_error": "the provider answered something the sync cannot use",
    "cursor_expired": "the stored cursor is no longer valid and no full sync could follow",
    "sync_in_progress": "another sync held the provider or the mailbox past the wait",
    "mailbox_disconnected": "the mailbox was disconnected while the job was queued",
    "credentials_unreadable": "no configured encryption key opens the stored credentials",
    "service_unavailable": "Prefect could not be asked for what the sync needed",
    "orchestrator_unavailable": "Prefect refused the job's flow run, or none came",
    "job_cancelled": "the job's flow run was cancelled (from the Prefect UI, say)",
    "job_crashed": "the job's flow run crashed (its process died)",
    "job_failed": "the job's flow run failed, or an administrator failed the job",
    "job_lost": "the flow run vanished or ended without recording the job's end",
    "internal_error": "a bug; the message names the exception's type only",
}


def http_status(error: MailsyncError) -> int:
    """The status an API answer carries for `error`."""
    return HTTP_STATUS.get(error.code, 500)


def job_error_code(exc: BaseException) -> str:
    """The code a job records when `exc` ended one of its mailboxes."""
    return exc.code if isinstance(exc, MailsyncError) else "internal_error"


def error_classes() -> list[type[MailsyncError]]:
    """Every MailsyncError class mailsync defines (for the completeness test of the tables
    above); subclasses defined elsewhere, by a test say, are not mailsync's to tabulate."""
    found: list[type[MailsyncError]] = []
    pending: list[type[MailsyncError]] = [MailsyncError]
    while pending:
        cls = pending.pop()
        if cls.__module__.split(".")[0] == "mailsync":
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
