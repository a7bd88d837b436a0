"""Request and response bodies of the public API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    mode: Literal["incremental", "full"] = "incremental"
    provider: Literal["gmail", "microsoft"] | None = None


class JobCreated(BaseModel):
    job_id: str
    status: Literal["queued", "running", "completed", "failed"]
    mode: Literal["incremental", "full"]
    queued_at: str


class JobCreatedEnvelope(BaseModel):
    data: JobCreated


class JobError(BaseModel):
    code: str
    message: str | None


class MailboxOutcome(BaseModel):
    provider: str
    address: str
    requested_mode: str
    performed_mode: str | None  # null when the mailbox did not sync (see error)
    reason: str | None
    resumed: bool = False
    counts: dict[str, int]
    error: JobError | None = None  # why this mailbox did not sync, e.g. provider_auth_failed


class Job(JobCreated):
    providers: list[str]
    started_at: str | None
    finished_at: str | None
    counts: dict[str, int] | None
    progress: dict[str, int] | None = None  # processed, estimated_total (while running)
    mailboxes: list[MailboxOutcome]
    error: JobError | None


class JobEnvelope(BaseModel):
    data: Job


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str
    param: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody
