"""Request and response bodies of `/v1/mailboxes` and the consent flow (`/v1/oauth/callback`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MailboxErrorOut(BaseModel):
    code: str = Field(description="A job error code (see the README's table).")
    message: str | None


class MailboxOut(BaseModel):
    id: str = Field(description="mbx_...; kept across re-authorizations.")
    provider: Literal["gmail", "microsoft"]
    address: str
    status: Literal["active", "reauth_required", "disconnected"] = Field(
        description="reauth_required: the provider refused the grant; POST "
        "/v1/mailboxes/connect with this mailbox_id. disconnected: DELETE'd (no credentials, "
        "no index)."
    )
    connected_at: str | None = Field(description="ISO 8601, UTC: the last (re-)connect.")
    last_synced_at: str | None = Field(description="The last successful sync.")
    last_job_id: str | None = Field(description="The last job that synced or tried to.")
    last_error: MailboxErrorOut | None = Field(description="How that job's attempt failed.")
    message_count: int = Field(description="Messages in the searchable index.")
    lag_seconds: int | None = Field(
        description="Now minus last_synced_at; null before the first successful sync."
    )
    push: Literal["active", "expired", "failing", "off"] = Field(
        description="The provider's push channel (Gmail watch, Graph subscription): active, "
        "expired or failing (the mailbox is polled at the refresh interval meanwhile), or off."
    )
    push_expires_at: str | None = Field(description="ISO 8601, UTC: when the channel lapses.")
    last_notification_at: str | None = Field(description="The last authenticated notification.")


class MailboxEnvelope(BaseModel):
    data: MailboxOut


class MailboxList(BaseModel):
    data: list[MailboxOut]


class ConnectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    provider: Literal["gmail", "microsoft"]
    redirect_uri: str = Field(
        max_length=2048,
        description="Where the user is sent at the end, with mailbox_id (or error and "
        "error_description); must be on MAILSYNC_OAUTH_REDIRECT_ALLOWLIST.",
    )
    login_hint: str | None = Field(
        default=None, max_length=320, description="The address the user will sign in with."
    )
    mailbox_id: str | None = Field(
        default=None,
        max_length=40,
        description="Re-authorize this mailbox (same id; its sync state starts afresh).",
    )


class ConnectStarted(BaseModel):
    authorization_url: str = Field(description="Send the user here (the provider's consent).")
    expires_at: str = Field(description="ISO 8601, UTC: the flow's state expires then.")


class ConnectEnvelope(BaseModel):
    data: ConnectStarted
