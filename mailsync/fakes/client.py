"""Typed clients of the fakes' /_admin surfaces: tests and benchmarks drive them without raw JSON.

    with GmailAdmin(gmail_url, ca_path) as gmail:
        account = gmail.create_mailbox("a@example.com", messages=10)
        provider = GmailProvider(account.address, account.provider_credentials(), endpoints)
        gmail.hold(account.address)       # every API call of the mailbox waits...
        gmail.release(account.address)    # ...until this
        gmail.stats()                     # {"messages.list": 1, ...}

`admin_client("gmail" | "microsoft", base_url, ca_path)` picks the class by provider name. Every
method raises AdminError for an answer of 400 or more; `http` is the underlying httpx.Client for
checks of the raw wire.
"""

from __future__ import annotations

import os
import ssl
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

from mailsync.fakes.admin_types import (
    AppCredentials,
    Concurrency,
    DelegatedCredentials,
    DeltaGate,
    FaultStats,
    Folder,
    FolderRef,
    GmailAccount,
    GmailCredentials,
    GmailMessage,
    GraphRequest,
    LabelChange,
    MessageChange,
    MicrosoftAccount,
    OAuthClient,
    QuotaUsage,
    ServiceAccountKey,
)
from mailsync.fakes.control import FaultSpec
from mailsync.fakes.faults import FaultPlan
from mailsync.fakes.push_admin import GmailPushAdmin, GraphPushAdmin

__all__ = [
    "AdminError",
    "AppCredentials",
    "Concurrency",
    "DelegatedCredentials",
    "DeltaGate",
    "FakeAdmin",
    "FaultPlan",
    "FaultStats",
    "Folder",
    "FolderRef",
    "GmailAccount",
    "GmailAdmin",
    "GmailCredentials",
    "GmailMessage",
    "GraphRequest",
    "LabelChange",
    "MessageChange",
    "MicrosoftAccount",
    "MicrosoftAdmin",
    "OAuthClient",
    "QuotaUsage",
    "ServiceAccountKey",
    "admin_client",
]


class AdminError(RuntimeError):
    """An admin call answered with an error status; `detail` is FastAPI's {"detail"} value."""

    def __init__(self, method: str, path: str, status: int, detail: object) -> None:
        super().__init__(f"{method} {path} -> {status}: {detail}")
        self.status = status
        self.detail = detail


def _path(address: str, rest: str = "") -> str:
    return f"/_admin/mailboxes/{quote(address, safe='@')}{rest}"


class FakeAdmin:
    """What both fakes' admin surfaces share: counters, faults, holds, tokens, messages."""

    def __init__(
        self,
        base_url: str,
        ca_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        """Over a client of its own to `base_url` (trusting `ca_path`), or over `http`, which
        it then neither configures nor closes."""
        self._owned = http is None
        if http is None:
            verify: ssl.SSLContext | bool = (
                ssl.create_default_context(cafile=os.fspath(ca_path)) if ca_path else True
            )
            http = httpx.Client(base_url=base_url, verify=verify, trust_env=False, timeout=timeout)
        self.http = http

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise AdminError(method, path, response.status_code, detail)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    # -- per operation (FakeControl) ------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Calls per operation since the last reset (an operation never called is absent)."""
        requests: dict[str, int] = self._json("GET", "/_admin/stats")["requests"]
        return requests

    def reset_stats(self) -> None:
        """Zero the counters and drop the queued per-operation faults."""
        self._call("POST", "/_admin/stats/reset")

    def fail(
        self,
        operation: str,
        status: int = 503,
        *,
        count: int = 1,
        retry_after: int | None = None,
        after: int = 0,
    ) -> None:
        """Answer `count` calls of `operation` with `status`, after letting `after` through."""
        spec = FaultSpec(
            operation=operation, status=status, count=count, retry_after=retry_after, after=after
        )
        self._call("POST", "/_admin/faults", json=spec.model_dump())

    def expire_tokens(self) -> int:
        """Make every access token issued so far expire; how many there were."""
        expired: int = self._json("POST", "/_admin/tokens/expire")["expired"]
        return expired

    # -- per mailbox (mailsync.fakes.faults) ----------------------------------------------

    def set_faults(self, address: str, plan: FaultPlan) -> None:
        """Arm `plan` for the mailbox (replacing, and releasing, any plan before it)."""
        body = plan.model_dump(exclude_unset=True)
        self._call("POST", _path(address, "/faults"), json=body)

    def slow_down(self, address: str, slow_ms: int) -> None:
        """Delay every API call of the mailbox by `slow_ms`, failing none."""
        self.set_faults(address, FaultPlan(slow_ms=slow_ms))

    def hold(self, address: str) -> None:
        """Every API call of the mailbox waits (at most HOLD_MAX_S) until release()."""
        self.set_faults(address, FaultPlan(hold=True))

    def release(self, address: str) -> bool:
        """Clear the mailbox's plan, letting held calls go; whether there was one."""
        cleared: bool = self._json("DELETE", _path(address, "/faults"))["cleared"]
        return cleared

    def fault_stats(self, address: str) -> FaultStats:
        return FaultStats.model_validate(self._json("GET", _path(address, "/faults")))

    # -- messages -------------------------------------------------------------------------

    def delete_message(self, address: str, message_id: str) -> None:
        self._call("DELETE", _path(address, f"/messages/{quote(message_id, safe='')}"))

    # -- consent (mailsync.fakes.consent) -------------------------------------------------

    def set_consent(
        self, address: str, *, deny: bool = False, untick: list[str] | None = None
    ) -> None:
        """How the user answers consent screens: Cancel (`deny`), or Allow minus `untick`."""
        self._call("PUT", _path(address, "/consent"), json={"deny": deny, "untick": untick or []})


class GmailAdmin(GmailPushAdmin, FakeAdmin):
    """The fake Gmail's admin surface (mailsync.fakes.gmail)."""

    def create_mailbox(self, address: str, messages: int | None = None) -> GmailAccount:
        """The mailbox's credentials, creating it (with `messages`, else the app's seed count)
        if it does not exist yet."""
        body: dict[str, Any] = {"address": address}
        if messages is not None:
            body["messages"] = messages
        response = self._call("POST", "/_admin/mailboxes", json=body)
        return GmailAccount(**response.json(), created=response.status_code == 201)

    def revoke(self, address: str) -> GmailAccount:
        """A new refresh token; the old one and every access token stop working."""
        return GmailAccount.model_validate(self._json("POST", _path(address, "/revoke")))

    def register_oauth_client(self, redirect_uris: list[str] | None = None) -> OAuthClient:
        """A web OAuth client (mailsync's own, for the consent flow) allowed to redirect to
        `redirect_uris` (and any loopback address, as Google's desktop clients are)."""
        body = {"redirect_uris": redirect_uris or []}
        return OAuthClient.model_validate(self._json("POST", "/_admin/oauth-clients", json=body))

    def service_account(self, client_email: str | None = None) -> ServiceAccountKey:
        """A service-account key (domain-wide delegation to every mailbox of the fake)."""
        body = {"client_email": client_email} if client_email else {}
        return ServiceAccountKey.model_validate(
            self._json("POST", "/_admin/service-accounts", json=body)
        )

    def ids(self, address: str) -> list[str]:
        """Every message id, newest first."""
        ids: list[str] = self._json("GET", _path(address, "/messages"))["ids"]
        return ids

    def labels(self, address: str) -> dict[str, list[str]]:
        """Every message id (newest first) -> its labels."""
        body = self._json("GET", _path(address, "/messages"), params={"labels": "true"})
        labels: dict[str, list[str]] = body["labels"]
        return labels

    def add_messages(self, address: str, count: int = 1) -> list[str]:
        """`count` new messages (each a messageAdded history record); their ids."""
        body = self._json("POST", _path(address, "/messages"), json={"count": count})
        ids: list[str] = body["ids"]
        return ids

    def message(self, address: str, message_id: str) -> GmailMessage:
        path = _path(address, f"/messages/{quote(message_id, safe='')}")
        return GmailMessage.model_validate(self._json("GET", path))

    def modify_labels(
        self,
        address: str,
        message_id: str,
        add: list[str] | None = None,
        remove: list[str] | None = None,
    ) -> LabelChange:
        path = _path(address, f"/messages/{quote(message_id, safe='')}")
        body = {"add_labels": add or [], "remove_labels": remove or []}
        return LabelChange.model_validate(self._json("PATCH", path, json=body))

    def expire_history(self, address: str) -> str:
        """Make every history id so far stale (history.list answers 404); the new history id."""
        history_id: str = self._json("POST", _path(address, "/expire-history"))["historyId"]
        return history_id

    def set_quota(
        self, address: str, units_per_minute: int | None, status: Literal[403, 429] | None = None
    ) -> QuotaUsage:
        """The mailbox's per-user quota (None: unlimited, still counted), refused with `status`."""
        body: dict[str, Any] = {"units_per_minute": units_per_minute}
        if status is not None:
            body["status"] = status
        return QuotaUsage.model_validate(self._json("PUT", _path(address, "/quota"), json=body))

    def quota(self, address: str) -> QuotaUsage:
        return QuotaUsage.model_validate(self._json("GET", _path(address, "/quota")))


class MicrosoftAdmin(GraphPushAdmin, FakeAdmin):
    """The fake Microsoft identity platform + Graph's admin surface (mailsync.fakes.microsoft).
    Folders are named by key ("inbox", "projects/falcon"), well-known name or Graph id."""

    def create_mailbox(
        self,
        address: str,
        messages: int | None = None,
        *,
        tenant_id: str | None = None,
        spread: bool = False,
    ) -> MicrosoftAccount:
        """The mailbox's credentials, creating it if new (`spread`: messages in every folder,
        else inbox and sent items only); AdminError 409 if it exists in another tenant."""
        body: dict[str, Any] = {"address": address, "spread": spread}
        if messages is not None:
            body["messages"] = messages
        if tenant_id is not None:
            body["tenant_id"] = tenant_id
        response = self._call("POST", "/_admin/mailboxes", json=body)
        return MicrosoftAccount(**response.json(), created=response.status_code == 201)

    def revoke(self, address: str) -> MicrosoftAccount:
        """Sign the user out everywhere: every refresh and delegated access token of the
        mailbox stops working (invalid_grant); the answer holds new delegated credentials."""
        return MicrosoftAccount.model_validate(self._json("POST", _path(address, "/revoke")))

    def approve_device(self, user_code: str, address: str) -> None:
        """The user enters `user_code` on the verification page and signs in as `address`."""
        self._call(
            "POST", f"/_admin/device-codes/{quote(user_code, safe='')}/approve",
            json={"address": address},
        )  # fmt: skip

    def ids(self, address: str, folder: str | None = None) -> list[str]:
        """The immutable ids of every message (of `folder` only, if given)."""
        params = {"folder": folder} if folder else None
        ids: list[str] = self._json("GET", _path(address, "/messages"), params=params)["ids"]
        return ids

    def placement(self, address: str, folder: str | None = None) -> dict[str, str]:
        """Every message id -> the Graph id of the folder holding it."""
        params = {"with_folders": "true", **({"folder": folder} if folder else {})}
        placement: dict[str, str] = self._json("GET", _path(address, "/messages"), params=params)[
            "folders"
        ]
        return placement

    def add_messages(self, address: str, count: int = 1, folder: str = "inbox") -> list[str]:
        body = {"count": count, "folder": folder}
        ids: list[str] = self._json("POST", _path(address, "/messages"), json=body)["ids"]
        return ids

    def update_message(
        self,
        address: str,
        message_id: str,
        *,
        subject: str | None = None,
        is_read: bool | None = None,
        folder: str | None = None,
    ) -> MessageChange:
        """Edit and/or move one message (a change the next delta round reports)."""
        path = _path(address, f"/messages/{quote(message_id, safe='')}")
        body = {"subject": subject, "is_read": is_read, "folder": folder}
        return MessageChange.model_validate(self._json("PATCH", path, json=body))

    def folders(self, address: str) -> list[Folder]:
        body = self._json("GET", _path(address, "/folders"))
        return [Folder.model_validate(f) for f in body["folders"]]

    def create_folder(self, address: str, name: str, parent: str | None = None) -> FolderRef:
        """A user folder under `parent` (None: the top level); AdminError 409 if it exists."""
        body = {"name": name, "parent": parent}
        return FolderRef.model_validate(self._json("POST", _path(address, "/folders"), json=body))

    def expire_delta(self, address: str) -> int:
        """Make every delta and skip token so far stale (410); the mailbox's new delta epoch."""
        epoch: int = self._json("POST", _path(address, "/expire-delta"))["delta_epoch"]
        return epoch

    def hold_delta(self, address: str, folder: str) -> None:
        """Hold the folder's delta calls before they are answered (at most 20 s each) until
        release_delta: a breakpoint between the folders of one sync."""
        self._call("PUT", _path(address, "/delta-gates"), json={"folder": folder, "hold": True})

    def release_delta(self, address: str, folder: str) -> None:
        self._call("PUT", _path(address, "/delta-gates"), json={"folder": folder, "hold": False})

    def delta_gates(self, address: str) -> dict[str, DeltaGate]:
        """Folder key -> its gate (held, waiting, answered) for every folder read or held."""
        body = self._json("GET", _path(address, "/delta-gates"))["gates"]
        return {key: DeltaGate.model_validate(gate) for key, gate in body.items()}

    def concurrency(self, address: str) -> Concurrency:
        return Concurrency.model_validate(self._json("GET", _path(address, "/concurrency")))

    def requests(self, address: str) -> list[GraphRequest]:
        """The mailbox's recent Graph requests, oldest first."""
        body = self._json("GET", _path(address, "/requests"))
        return [GraphRequest.model_validate(r) for r in body["requests"]]

    def reset_limits(self, address: str) -> None:
        """Forget the mailbox's concurrency peak, rejections and request log."""
        self._call("POST", _path(address, "/limits/reset"))


def admin_client(
    provider: str,
    base_url: str,
    ca_path: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 30.0,
    http: httpx.Client | None = None,
) -> GmailAdmin | MicrosoftAdmin:
    """The admin client of the fake for `provider` ("gmail" or "microsoft")."""
    kinds: dict[str, type[GmailAdmin] | type[MicrosoftAdmin]] = {
        "gmail": GmailAdmin,
        "microsoft": MicrosoftAdmin,
    }
    if provider not in kinds:
        raise ValueError(f"no fake for provider {provider!r}")
    return kinds[provider](base_url, ca_path, timeout=timeout, http=http)
