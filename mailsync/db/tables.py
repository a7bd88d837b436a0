"""Database tables and the API's public shapes (SQLModel Base/table/Public split)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel
from ulid import ULID


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{ULID()}"


class Provider(StrEnum):
    gmail = "gmail"
    microsoft = "microsoft"


class MailboxStatus(StrEnum):
    active = "active"
    reauth_required = "reauth_required"  # the provider refused the grant: consent again
    disconnected = "disconnected"  # DELETE /v1/mailboxes/{id}: no credentials, no index


class SyncMode(StrEnum):
    incremental = "incremental"
    full = "full"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.completed, JobStatus.failed)


# Timestamps are stored as timezone-aware on PostgreSQL; SQLite drops the zone, which
# `as_utc` restores on the way out.
def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(sa.DateTime(timezone=True), nullable=nullable, index=index),
    )


class Workspace(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
    # Opted in to the `nightly-full-sync` deployment (a full rebuild of every mailbox).
    nightly_full_sync: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})


class ApiKey(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("key"), primary_key=True, max_length=40)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=64)
    name: str = Field(default="", max_length=200)
    prefix: str = Field(max_length=16)  # first characters, to recognise a key in listings
    key_hash: str = Field(unique=True, max_length=64)
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
    expires_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()


class Mailbox(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("workspace_id", "provider", "address"),)

    id: str = Field(default_factory=lambda: new_id("mbx"), primary_key=True, max_length=40)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=64)
    provider: str = Field(max_length=16)
    address: str = Field(max_length=320)
    # Empty once disconnected (the credentials are deleted; the row stays as the mailbox's record).
    credentials_encrypted: str = Field(sa_column=Column(sa.Text, nullable=False))
    status: str = Field(
        default=MailboxStatus.active.value,
        max_length=16,
        sa_column_kwargs={"server_default": MailboxStatus.active.value},
    )
    connected_at: datetime | None = _ts()  # the last (re-)connect
    # The last job that synced or tried to sync the mailbox, and how that attempt ended.
    last_job_id: str | None = Field(default=None, max_length=40)
    last_error_code: str | None = Field(default=None, max_length=64)
    last_error_message: str | None = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    cursor: str | None = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    last_synced_at: datetime | None = _ts()
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
    # The index readers see is this generation; a full sync builds the next one beside it
    # and switches in one transaction, so nobody sees a half-built index.
    generation: int = 0
    building_generation: int | None = None
    # Where an interrupted full sync of `building_generation` resumes (provider-opaque).
    checkpoint: str | None = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    checkpoint_at: datetime | None = _ts()
    # Provider token state kept between syncs (msal's cache, Google's access token): secret.
    auth_state_encrypted: str | None = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    # Bumped by every re-connect: a sync's writes (pages, cursor, checkpoint, token state) are
    # bound to the version it read, so one still running on old credentials writes no more.
    credentials_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class MailboxPush(SQLModel, table=True):
    """A mailbox's push channel (Gmail watch, Graph subscription) and its coalescing slot."""

    mailbox_id: str = Field(foreign_key="mailbox.id", primary_key=True, max_length=40)
    provider: str = Field(max_length=16)
    # active | failing | off; "expired" is read from expires_at (core/push/state.py).
    status: str = Field(default="off", max_length=16)
    # Graph's subscription id (notifications name it); None for a Gmail watch.
    channel_id: str | None = Field(default=None, max_length=200, index=True)
    # Graph's clientState for this subscription: a secret, sealed like the credentials.
    client_state_encrypted: str | None = Field(
        default=None, sa_column=Column(sa.Text, nullable=True)
    )
    expires_at: datetime | None = _ts()
    renewed_at: datetime | None = _ts()
    last_notification_at: datetime | None = _ts()
    last_error: str | None = Field(default=None, max_length=300)
    # Gmail: the historyId the watch or its latest notification named.
    history_id: str | None = Field(default=None, max_length=32)
    # The push job queued for this mailbox and not yet syncing: one at most (coalescing).
    queued_job_id: str | None = Field(default=None, max_length=40)


class Message(SQLModel, table=True):
    __table_args__ = (
        sa.UniqueConstraint(
            "mailbox_id", "generation", "provider_message_id", name="uq_message_generation_id"
        ),
        # The search listing's order within a mailbox's live generation (keyset pages).
        sa.Index("ix_message_listing", "mailbox_id", "generation", "date", "public_id"),
        # ... and across a workspace's mailboxes (migration 0008).
        sa.Index("ix_message_workspace_listing", "workspace_id", "date", "public_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    mailbox_id: str = Field(foreign_key="mailbox.id", index=True, max_length=40)
    # The mailbox's workspace, copied here so a workspace's listing is one index walk.
    workspace_id: str = Field(max_length=64)
    generation: int = 0
    provider_message_id: str = Field(max_length=512)
    # The id the API shows (core/search/ids.py): the same in every generation of the message.
    # The full-text index lives beside the row (migration 0007: FTS5 / a tsvector column).
    public_id: str = Field(max_length=40, index=True)
    thread_id: str | None = Field(default=None, max_length=512)
    sender: str | None = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    to: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    cc: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    subject: str | None = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    snippet: str | None = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    date: datetime | None = _ts(index=True)
    labels: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    size: int | None = None


class SyncJob(SQLModel, table=True):
    id: str = Field(default_factory=lambda: new_id("sync"), primary_key=True, max_length=40)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=64)
    mode: str = Field(max_length=16)
    providers: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(default=JobStatus.queued.value, max_length=16, index=True)
    trigger: str = Field(default="api", max_length=16)  # api | ui | schedule | cli | push
    queued_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    counts: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # While it runs: messages processed and the providers' estimate of the total.
    progress: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Per-mailbox outcome: provider, address, mode actually performed and why.
    mailboxes: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(sa.Text, nullable=True))
    flow_run_id: str | None = Field(default=None, max_length=64, index=True)
    # The Prefect lease on the workspace+provider full-sync limit (full syncs only).
    lease_id: str | None = Field(default=None, max_length=64)
    # The Prefect lease on the workspace's on-demand quota, and when that slot frees.
    quota_lease_id: str | None = Field(default=None, max_length=64)
    quota_expires_at: datetime | None = _ts(index=True)
    # The one mailbox a job syncs (push-triggered jobs); None: every connected mailbox of
    # its providers.
    mailbox_id: str | None = Field(default=None, max_length=40, index=True)


class RunLease(SQLModel, table=True):
    """A Prefect lease a flow run holds on a mailbox's turn, recorded so that a run that dies
    (SIGKILL, OOM) has it given back by its crash hook, instead of the mailbox waiting a
    lease time for it to expire (orchestration/leases.py)."""

    lease_id: str = Field(primary_key=True, max_length=64)
    flow_run_id: str = Field(max_length=64, index=True)
    taken_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )


class IdempotencyRecord(SQLModel, table=True):
    """One Idempotency-Key's first request and, once it ended, the response to replay."""

    __table_args__ = (sa.UniqueConstraint("workspace_id", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: str = Field(foreign_key="workspace.id", max_length=64)
    key: str = Field(max_length=64)
    request_hash: str = Field(max_length=64)
    status_code: int | None = None  # None while the first request is still in progress
    response_body: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    job_id: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
    expires_at: datetime = Field(
        sa_column=Column(sa.DateTime(timezone=True), nullable=False, index=True)
    )


class OAuthState(SQLModel, table=True):
    """One consent flow in progress: its `state` (stored as a SHA-256 hash only), the workspace
    it is bound to, where the user goes at the end, and the sealed PKCE verifier / msal flow.
    Single-use: `used_at` is set by the one callback that may consume it."""

    id: str = Field(default_factory=lambda: new_id("oas"), primary_key=True, max_length=40)
    state_hash: str = Field(unique=True, max_length=64)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=64)
    provider: str = Field(max_length=16)
    redirect_uri: str = Field(sa_column=Column(sa.Text, nullable=False))
    mailbox_id: str | None = Field(default=None, max_length=40)  # a re-authorization
    flow_encrypted: str = Field(sa_column=Column(sa.Text, nullable=False))  # secret
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
    expires_at: datetime = Field(
        sa_column=Column(sa.DateTime(timezone=True), nullable=False, index=True)
    )
    used_at: datetime | None = _ts()


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, to the second, as the spec's example shows."""
    value = as_utc(value)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


# --- Webhooks (mailsync/webhooks/) -------------------------------------------------------


class WebhookEndpoint(SQLModel, table=True):
    """A receiver URL of a workspace and the events it subscribed to."""

    id: str = Field(default_factory=lambda: new_id("wh"), primary_key=True, max_length=40)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=64)
    url: str = Field(sa_column=Column(sa.Text, nullable=False))
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Signing secrets must be recoverable to sign, so they are encrypted (never hashed).
    secret_encrypted: str = Field(sa_column=Column(sa.Text, nullable=False))
    # After a rotation the old secret keeps signing too until it expires (overlap).
    previous_secret_encrypted: str | None = Field(
        default=None, sa_column=Column(sa.Text, nullable=True)
    )
    previous_secret_expires_at: datetime | None = _ts()
    status: str = Field(default="active", max_length=16)  # active | disabled
    failing_since: datetime | None = _ts()  # first failed attempt since the last success
    disabled_at: datetime | None = _ts()
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )


class WebhookEvent(SQLModel, table=True):
    """The outbox: written in the transaction that causes the event, so it cannot be lost."""

    id: str = Field(default_factory=lambda: new_id("msg"), primary_key=True, max_length=40)
    workspace_id: str = Field(foreign_key="workspace.id", index=True, max_length=64)
    type: str = Field(max_length=64)
    # What the event is about (a job id, an endpoint id): one event per job outcome.
    subject_id: str | None = Field(default=None, max_length=40, index=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )


class WebhookDelivery(SQLModel, table=True):
    """One event to one endpoint; the retry schedule lives in next_attempt_at."""

    __table_args__ = (
        sa.UniqueConstraint("event_id", "endpoint_id", name="uq_webhookdelivery_event_endpoint"),
    )

    id: str = Field(default_factory=lambda: new_id("whd"), primary_key=True, max_length=40)
    event_id: str = Field(foreign_key="webhookevent.id", max_length=40)
    endpoint_id: str = Field(foreign_key="webhookendpoint.id", index=True, max_length=40)
    status: str = Field(default="pending", max_length=16)  # pending | delivered | failed
    attempts: int = 0
    next_attempt_at: datetime | None = _ts(index=True)
    retry_until: datetime | None = _ts()  # end of the retry horizon (reset by a replay)
    last_status_code: int | None = None
    delivered_at: datetime | None = _ts()
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )


class WebhookAttempt(SQLModel, table=True):
    """The delivery log: one row per HTTP attempt."""

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(foreign_key="webhookdelivery.id", index=True, max_length=40)
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True), nullable=False)
    )
    status_code: int | None = None
    latency_ms: int = 0
    error: str | None = Field(default=None, max_length=300)
