"""Request and response bodies of the webhook endpoints API (`/v1/webhooks`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["email.sync.completed", "email.sync.failed", "mailbox.reauth_required"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(
        max_length=2048,
        description="https URL of the receiver; loopback, private, link-local and metadata "
        "addresses are refused.",
    )
    events: list[str] | None = Field(
        default=None,
        description="Event types to receive (default: email.sync.completed and "
        "email.sync.failed; mailbox.reauth_required on request).",
        examples=[["email.sync.completed", "email.sync.failed"]],
    )


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    overlap_seconds: int | None = Field(
        default=None,
        ge=0,
        le=7 * 24 * 3600,
        description="How long the current secret keeps signing beside the new one "
        "(default MAILSYNC_WEBHOOK_SECRET_OVERLAP_SECONDS, 24 h).",
    )


class WebhookEndpointOut(BaseModel):
    id: str
    url: str
    events: list[str]
    status: Literal["active", "disabled"]
    created_at: str
    failing_since: str | None
    disabled_at: str | None
    previous_secret_expires_at: str | None


class WebhookSecretOut(WebhookEndpointOut):
    secret: str = Field(description="whsec_...: shown only in this response; store it now.")


class WebhookEndpointEnvelope(BaseModel):
    data: WebhookEndpointOut


class WebhookSecretEnvelope(BaseModel):
    data: WebhookSecretOut


class WebhookEndpointList(BaseModel):
    data: list[WebhookEndpointOut]


class AttemptOut(BaseModel):
    started_at: str
    status_code: int | None
    latency_ms: int
    error: str | None


class DeliveryOut(BaseModel):
    id: str
    event_id: str = Field(description="The webhook-id header: the same on every attempt.")
    event_type: str
    endpoint_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    delivered_at: str | None
    created_at: str
    attempt_log: list[AttemptOut]


class DeliveryEnvelope(BaseModel):
    data: DeliveryOut


class DeliveryList(BaseModel):
    data: list[DeliveryOut]


class NoticeOut(BaseModel):
    id: str
    type: str
    timestamp: str | None
    data: dict[str, Any]


class NoticeList(BaseModel):
    data: list[NoticeOut]
