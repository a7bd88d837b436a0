"""All configuration in one place, read from MAILSYNC_* environment variables."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailsync.errors import ConfigurationError
from mailsync.providers.base import ProviderEndpoints, ProviderOptions


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILSYNC_", extra="ignore")

    data_dir: Path = Field(default=Path(".data"))
    database_url: str | None = None
    prefect_api_url: str | None = None
    # The Prefect API's auth string (Prefect's basic auth, "user:password"). Unset: the server
    # `mailsync up` starts gets one generated into the data dir (prefect_server_auth_string);
    # an existing Prefect's clients send PREFECT_API_AUTH_STRING, if any.
    prefect_auth_string: SecretStr | None = None
    # The longest one Prefect API call of the API process may take, the Prefect client's own
    # retries included (orchestration/deadline.py); past it the request gets 503 + Retry-After.
    prefect_call_budget_seconds: float = Field(default=10.0, gt=0)
    prefect_port: int = 4200
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    work_pool: str = "mailsync"
    # Flow runs one worker runs at once (`prefect worker start --limit`); unset: no limit.
    worker_limit: int | None = Field(default=None, ge=1)
    # One Fernet key, or a comma-separated list during a rotation: the first encrypts, all
    # decrypt (mailsync/db/crypto.py, `mailsync encryption rotate`).
    encryption_key: SecretStr | None = None

    google_token_uri: str = "https://oauth2.googleapis.com/token"
    google_auth_uri: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_revoke_uri: str | None = None  # None: beside google_token_uri (.../revoke)
    gmail_api_url: str = "https://gmail.googleapis.com/"
    microsoft_authority_host: str = "https://login.microsoftonline.com"
    graph_api_url: str = "https://graph.microsoft.com/v1.0"
    # The consent flow (POST /v1/mailboxes/connect, README "Connecting mailboxes"): mailsync's
    # own app registrations, the public base URL the providers send users back to
    # (<public_url>/v1/oauth/callback, registered as a redirect URI with them), and where
    # the flow may send users at the end (comma-separated; scheme, host, port and path must
    # match one exactly, a query string is kept).
    google_client_id: str | None = None
    google_client_secret: SecretStr | None = None
    microsoft_client_id: str | None = None
    microsoft_client_secret: SecretStr | None = None
    # The authority's tenant: "organizations" (any work account) or one tenant's id/domain.
    microsoft_tenant: str = "organizations"
    public_url: str | None = None
    oauth_redirect_allowlist: str = ""
    # Extra CA certificates to trust for provider endpoints (the fakes' generated CA).
    provider_ca_bundle: Path | None = None
    # Gmail's per-user quota the sync paces itself to (6,000 for projects created after
    # 2026-05-01); Graph folders to sync ("all" for every mail folder) and delta page size.
    gmail_quota_units_per_minute: int = Field(default=15_000, ge=1)
    # The quota's window: a minute at Gmail; shorter only to time-scale tests and benchmarks.
    gmail_quota_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    microsoft_folders: str = "inbox,sentitems"
    microsoft_page_size: int = Field(default=100, ge=1, le=1000)

    # Input limits (mailsync/api/middleware.py): a body over max_body_bytes gets 413, one
    # that has not fully arrived body_timeout_seconds after the request's head gets 408, a
    # head with more than max_header_count fields or max_header_bytes of them gets 431.
    max_body_bytes: int = 64 * 1024
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=8 * 1024, ge=1024)
    max_header_count: int = Field(default=100, ge=10)
    # Served as devstack/api_server.py says: an idle keep-alive connection is closed after
    # this; past max_connections open connections (or requests) uvicorn itself answers a plain
    # 503 (its --limit-concurrency, a backstop far above the in-flight caps below).
    api_keep_alive_seconds: int = Field(default=5, ge=1)
    api_max_connections: int = Field(default=512, ge=1)

    # Load shedding (mailsync/api/overload.py), per API process: at most max_in_flight
    # requests are served at once, of which at most max_in_flight_sync are POST
    # /v1/email/sync (two Prefect writes each); /health has health_max_in_flight of its own.
    # A request waits up to overload_wait_seconds for a slot, then gets 503 with Retry-After.
    max_in_flight: int = Field(default=16, ge=1)
    max_in_flight_sync: int = Field(default=4, ge=1)
    health_max_in_flight: int = Field(default=2, ge=1)
    overload_wait_seconds: float = Field(default=2.0, ge=0)
    # Fair shares of those slots: what one client address may hold of max_in_flight, and one
    # caller (its API key) of max_in_flight_sync; None is half (at least one), so a client
    # with slow bodies or a tenant's burst of triggers never takes every slot from the rest.
    max_in_flight_per_client: int | None = Field(default=None, ge=1)
    max_in_flight_sync_per_caller: int | None = Field(default=None, ge=1)

    # The sync rules (enforced with Prefect global concurrency limits).
    sync_quota: int = 6  # accepted on-demand syncs per workspace per window
    sync_quota_window_seconds: int = Field(default=3600, ge=60)  # Prefect leases last >= 60 s
    full_sync_lease_seconds: int = Field(default=60, ge=60)  # renewed while the sync runs
    # A job's GET reads its flow run's Prefect state (to notice a run that crashed or was
    # cancelled without closing its job) at most once per this many seconds per API process;
    # in between it answers from the job row, which the flow itself keeps up to date.
    flow_run_read_interval_seconds: float = Field(default=1.0, ge=0)
    # How long a sync waits for another sync of the same mailbox to end (runtime.mailbox_turn).
    mailbox_wait_seconds: float = Field(default=1800.0, gt=0)
    # The general request quota of every other endpoint, per API key and per client address.
    request_quota_per_minute: int = 600
    address_quota_per_minute: int = 120
    # Every request, whatever its headers, per client address, when it arrives (before it may
    # hold an overload slot): a flood bound, above what one well-behaved client sends.
    arrival_quota_per_minute: int = 3000
    # The providers' push requests per client address (api/ratelimit.py, meter_push).
    push_quota_per_minute: int = 3000
    idempotency_ttl_seconds: int = 24 * 3600
    # Scheduled refreshes: a connected mailbox is due when its last sync is older than this
    # (the `refresh` deployment's schedule in prefect.yaml runs at the same interval), and
    # one refresh round syncs at most this many mailboxes at once.
    refresh_interval_seconds: int = Field(default=300, ge=60)
    refresh_concurrency: int = Field(default=16, ge=1, le=64)

    # Push (mailsync/core/push/): the providers tell us of changes instead of being polled.
    # push_public_url is where the providers reach this API (https://mailsync.example.com);
    # unset, push is off and every mailbox is polled every refresh interval. A mailbox whose
    # push works is polled only every push_poll_interval_seconds, to catch a lost notification.
    push_public_url: str | None = None
    push_poll_interval_seconds: int = Field(default=3600, ge=60)
    # Graph allows a mail subscription 4,230 minutes; one is renewed once less than
    # renew_before is left (refresh rounds run every few minutes, so well before it lapses).
    microsoft_subscription_minutes: int = Field(default=4230, ge=5, le=4230)
    microsoft_subscription_renew_before_minutes: int = Field(default=1440, ge=1)
    # Gmail: the Pub/Sub topic users.watch publishes to (projects/<p>/topics/<t>; Gmail's
    # service account needs the Publisher role on it), and what authenticates the push
    # subscription's requests: its OIDC token's signer (keys at certs_url), its `email` (the
    # push subscription's service account) and its `aud` (default: our push URL). Watches
    # lapse after 7 days; they are renewed once older than a day.
    gmail_pubsub_topic: str | None = None
    gmail_push_service_account: str | None = None
    gmail_push_audience: str | None = None
    gmail_push_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    gmail_watch_renew_seconds: int = Field(default=24 * 3600, ge=60)

    # Webhooks (mailsync/webhooks/): a failed delivery is retried after base, 2*base, 4*base
    # ... seconds (capped at max) until the horizon has passed since it was first due.
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_retry_horizon_seconds: int = Field(default=24 * 3600, ge=0)
    # One attempt: each phase (connect, TLS, every read and write) within the timeout, the
    # whole attempt within attempt_seconds (a receiver trickling bytes trips no phase timeout).
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_attempt_seconds: float = Field(default=15.0, gt=0)
    # Endpoints one workspace may register: each is an attempt per event (and a delivery row).
    webhook_max_endpoints: int = Field(default=16, ge=1)
    # How long a delivery run holds a delivery it is sending, so no other run sends it too;
    # longer than an attempt can take (checked below).
    webhook_claim_seconds: int = Field(default=60, ge=1)
    # Attempts one delivery run makes at once: in all, per endpoint, per workspace (lanes.py),
    # so a slow receiver holds its own lanes only.
    webhook_concurrency: int = Field(default=32, ge=1)
    webhook_endpoint_concurrency: int = Field(default=2, ge=1)
    webhook_workspace_concurrency: int = Field(default=8, ge=1)
    # Loopback receivers (and plain http) for local development and tests only.
    webhook_allow_loopback: bool = False
    webhook_disable_after_seconds: int = Field(default=3 * 24 * 3600, ge=0)
    webhook_secret_overlap_seconds: int = Field(default=24 * 3600, ge=0)

    # Pruning (the `prune` deployment, core/retention.py): finished jobs, their webhook events,
    # deliveries and attempts, and mailsync's terminal Prefect flow runs (with their logs and
    # artifacts) go once this many days old; a per-workspace, per-mailbox or legacy per-key /
    # per-address Prefect limit goes once nobody took or gave back a slot of it for
    # limit_idle_hours (it is created again on its next use).
    retention_days: int = Field(default=30, ge=1)
    limit_idle_hours: float = Field(default=24.0, gt=0)

    @model_validator(mode="after")
    def _claims_outlast_attempts(self) -> Settings:
        # A claim that lapsed mid-attempt would let another run send the delivery twice.
        if self.webhook_attempt_seconds >= self.webhook_claim_seconds:
            raise ValueError(
                "MAILSYNC_WEBHOOK_ATTEMPT_SECONDS must be less than MAILSYNC_WEBHOOK_CLAIM_SECONDS"
            )
        return self

    @property
    def push_base_url(self) -> str | None:
        """Our public base URL for the providers' push requests, without a trailing slash."""
        return self.push_public_url.rstrip("/") if self.push_public_url else None

    @property
    def resolved_database_url(self) -> str:
        url = self.database_url or f"sqlite:///{(self.data_dir / 'mailsync.db').resolve()}"
        # A bare postgresql:// URL would select psycopg2, which we do not ship.
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url

    @property
    def resolved_prefect_api_url(self) -> str:
        return (
            self.prefect_api_url
            or os.environ.get("PREFECT_API_URL")
            or f"http://127.0.0.1:{self.prefect_port}/api"
        )

    @property
    def provider_endpoints(self) -> ProviderEndpoints:
        return ProviderEndpoints(
            google_token_uri=self.google_token_uri,
            google_auth_uri=self.google_auth_uri,
            google_revoke_uri=self.google_revoke_uri,
            gmail_api_url=self.gmail_api_url,
            microsoft_authority_host=self.microsoft_authority_host,
            graph_api_url=self.graph_api_url,
            ca_bundle=str(self.provider_ca_bundle) if self.provider_ca_bundle else None,
        )

    @property
    def oauth_callback_url(self) -> str | None:
        return f"{self.public_url.rstrip('/')}/v1/oauth/callback" if self.public_url else None

    @property
    def oauth_redirects(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.oauth_redirect_allowlist.split(",") if u.strip())

    @property
    def provider_options(self) -> ProviderOptions:
        folders = self.microsoft_folders.strip().lower()
        return ProviderOptions(
            gmail_quota_units_per_minute=self.gmail_quota_units_per_minute,
            gmail_quota_window_seconds=self.gmail_quota_window_seconds,
            microsoft_folders=None
            if folders == "all"
            else tuple(f.strip() for f in folders.split(",") if f.strip()),
            microsoft_page_size=self.microsoft_page_size,
        )

    def fernet_key(self) -> bytes:
        """The credential-encryption key; generated into the data directory on first use
        (`_kept_secret`: a lost or emptied key file would orphan every stored credential)."""
        if self.encryption_key is not None:
            return self.encryption_key.get_secret_value().encode()
        return _kept_secret(self.data_dir / "encryption.key", Fernet.generate_key, "encryption key")

    @property
    def prefect_auth_string_path(self) -> Path:
        """Where `mailsync up` keeps its Prefect server's generated auth string."""
        return self.data_dir / "prefect-auth-string"

    def prefect_server_auth_string(self) -> str:
        """The auth string of the Prefect server `mailsync up` starts: the configured one, or
        one generated into the data directory on first start and kept like the encryption key
        (the UI's and the prefect CLI's logins go on working across restarts)."""
        if self.prefect_auth_string is not None:
            return self.prefect_auth_string.get_secret_value()
        path = self.prefect_auth_string_path
        generate = lambda: new_prefect_auth_string().encode()  # noqa: E731
        return _kept_secret(path, generate, "Prefect auth string").decode()

    def prefect_client_auth_string(self) -> str | None:
        """The auth string this process's Prefect clients send: the configured one, else
        Prefect's own PREFECT_API_AUTH_STRING (what the stack gives its children), else the
        one `mailsync up` keeps in the data dir (the CLI beside a local stack), else none."""
        if self.prefect_auth_string is not None:
            return self.prefect_auth_string.get_secret_value()
        if configured := os.environ.get("PREFECT_API_AUTH_STRING"):
            return configured
        if self.prefect_auth_string_path.exists():
            return _read_secret(self.prefect_auth_string_path, "Prefect auth string").decode()
        return None


def new_prefect_auth_string() -> str:
    """A new Prefect API auth string: user:password, as Prefect's docs and `curl -u` have it
    (the server compares it whole)."""
    return f"mailsync:{secrets.token_urlsafe(32)}"


def _kept_secret(path: Path, generate: Callable[[], bytes], what: str) -> bytes:
    """The secret in `path`, generated on first use.

    Created whole or not at all (written to a private temporary file, then linked into place:
    a concurrent first start reads either no file or the complete secret, and the second
    creator adopts the first's). A file that exists but cannot be read, or is empty, is an
    error, never a reason to make a new secret: what holds the old one would stop working."""
    if not path.exists():
        ensure_private_dir(path.parent)
        _create_exclusively(path, generate())
    return _read_secret(path, what)


def _read_secret(path: Path, what: str) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigurationError(f"the {what} file {path} cannot be read: {exc}") from exc
    if not secret:
        raise ConfigurationError(f"the {what} file {path} is empty")
    return secret


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) readable by its owner only; an existing one is left as is."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _create_exclusively(path: Path, content: bytes) -> None:
    """Write `content` to `path` with mode 0600 unless it exists, in one atomic step."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: its key
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


@lru_cache
def get_settings() -> Settings:
    return Settings()
