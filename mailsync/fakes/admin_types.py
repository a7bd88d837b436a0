"""The typed answers of the fakes' /_admin surfaces, as mailsync.fakes.client returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mailsync.fakes.faults import FaultPlan


class _Model(BaseModel):
    # Forbidding unknown fields makes a change of the fakes' admin JSON fail the client's tests.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FaultStats(_Model):
    plan: FaultPlan | None
    calls: int
    injected: int


class GmailCredentials(_Model):
    type: Literal["oauth"]
    client_id: str
    client_secret: str
    refresh_token: str


class GmailAccount(_Model):
    address: str
    credentials: GmailCredentials
    created: bool = False  # False: the mailbox existed already (or its credentials were rotated)

    def provider_credentials(self) -> dict[str, Any]:
        """The credentials as GmailProvider and workspaces.connect_mailbox take them."""
        return self.credentials.model_dump()


class ServiceAccountKey(_Model):
    type: Literal["service_account"]
    project_id: str
    private_key_id: str
    private_key: str
    client_email: str
    client_id: str
    auth_uri: str
    token_uri: str

    def info(self) -> dict[str, str]:
        """The key file's JSON, for google.oauth2.service_account.from_service_account_info."""
        return {k: str(v) for k, v in self.model_dump().items()}


class GmailMessage(_Model):
    id: str
    thread_id: str = Field(alias="threadId")
    label_ids: list[str] = Field(alias="labelIds")
    snippet: str
    size_estimate: int = Field(alias="sizeEstimate")
    history_id: str = Field(alias="historyId")
    internal_date: str = Field(alias="internalDate")
    headers: dict[str, str]


class LabelChange(_Model):
    id: str
    label_ids: list[str] = Field(alias="labelIds")
    history_id: str = Field(alias="historyId")


class QuotaUsage(_Model):
    units_per_minute: int | None
    window_seconds: float
    status: int
    in_window: int
    charged_total: int
    rejected: int
    first_charge: float | None
    last_charge: float | None


class AppCredentials(_Model):
    type: Literal["client_credentials"]
    tenant_id: str
    client_id: str
    client_secret: str


class DelegatedCredentials(_Model):
    type: Literal["refresh_token"]
    tenant_id: str
    client_id: str
    client_secret: str
    refresh_token: str


class OAuthClient(_Model):
    """A web OAuth client registered with the fake Google."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]


class MicrosoftAccount(_Model):
    address: str
    credentials: AppCredentials  # app-only (client credentials)
    delegated: DelegatedCredentials  # the mailbox's own user, by refresh token
    created: bool = False

    def provider_credentials(self, kind: Literal["app", "delegated"] = "app") -> dict[str, Any]:
        """The credentials as MicrosoftProvider and workspaces.connect_mailbox take them."""
        return (self.credentials if kind == "app" else self.delegated).model_dump()


class FolderRef(_Model):
    key: str  # the admin name: "inbox", "projects/falcon"
    id: str  # Graph's folder id
    display_name: str
    parent_key: str | None


class Folder(FolderRef):
    well_known: bool
    total: int  # messages in the folder


class MessageChange(_Model):
    id: str
    folder: str
    subject: str
    is_read: bool


class Concurrency(_Model):
    limit: int
    in_flight: int
    peak: int
    rejected: int


class GraphRequest(_Model):
    operation: str
    path: str
    query: dict[str, str]
    prefer: list[str]


class DeltaGate(_Model):
    held: bool  # its delta calls wait until released
    waiting: int  # calls waiting at the gate now
    answered: int  # delta calls of the folder answered so far


class GraphSubscription(_Model):
    """A Graph subscription as the fake holds it (mailsync.fakes.microsoft.subscriptions);
    Graph's other properties of it are not kept here."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str
    address: str
    resource: str
    change_type: str = Field(alias="changeType")
    notification_url: str = Field(alias="notificationUrl")
    lifecycle_url: str | None = Field(default=None, alias="lifecycleNotificationUrl")
    expiration: datetime = Field(alias="expirationDateTime")


class NotificationStats(_Model):
    """What the fake Graph sent: notifications meant, POSTs answered 2xx, given up on,
    dropped and duplicated by the admin controls, lifecycle events, answers by status."""

    notifications: int
    delivered: int
    failed: int
    dropped: int
    duplicated: int
    lifecycle: int
    statuses: dict[str, int]


class GmailWatch(_Model):
    address: str
    topic: str
    expiration: str  # epoch milliseconds, as Gmail answers users.watch


class PushSubscriptionSpec(_Model):
    """A fake Pub/Sub push subscription: where a topic's messages are POSTed, and the OIDC
    token's service account and audience (None: the endpoint)."""

    name: str
    topic: str
    endpoint: str
    service_account: str
    audience: str | None = None


class PushStats(_Model):
    published: int
    pushes: int
    delivered: int
    failed: int
    dropped: int
    duplicated: int
    statuses: dict[str, int]


class PubSubView(_Model):
    watches: list[GmailWatch]
    subscriptions: list[PushSubscriptionSpec]
    stats: PushStats
