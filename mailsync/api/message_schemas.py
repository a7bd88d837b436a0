"""Response bodies of the message search endpoints (GET /v1/email/messages...)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MessageOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(description="Opaque, stable across full syncs (msg_...).")
    mailbox_id: str
    provider: str
    provider_message_id: str
    thread_id: str | None
    sender: str | None = Field(alias="from", serialization_alias="from")
    to: list[str]
    cc: list[str]
    subject: str | None
    snippet: str | None
    date: str | None = Field(description="ISO 8601, UTC.")
    labels: list[str] = Field(description="Gmail label ids, or the Graph folder.")
    size: int | None


class MessageEnvelope(BaseModel):
    data: MessageOut


class MessageList(BaseModel):
    data: list[MessageOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )
