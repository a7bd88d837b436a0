"""The /_admin surface tests and demos drive a mailbox through: content, folders, delta, limits."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from mailsync.fakes.microsoft.errors import GraphFault
from mailsync.fakes.microsoft.mailbox import WELL_KNOWN_FOLDERS, Folder, Mailbox
from mailsync.fakes.microsoft.state import FakeMicrosoftState


class MailboxSpec(BaseModel):
    address: str = Field(pattern=r"^[^@\s/]+@[^@\s/]+$")
    messages: int | None = Field(default=None, ge=0, le=100_000)
    tenant_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]+$")
    spread: bool = False


class NewFolder(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    parent: str | None = None


class AddMessages(BaseModel):
    count: int = Field(default=1, ge=1, le=10_000)
    folder: str = "inbox"


class GateSpec(BaseModel):
    folder: str  # key, id or well-known name
    hold: bool


class LifecycleSpec(BaseModel):
    event: Literal["reauthorizationRequired", "subscriptionRemoved", "missed"]


class NotificationControl(BaseModel):
    drop: int | None = Field(default=None, ge=0, le=1_000_000)
    duplicate: int | None = Field(default=None, ge=0, le=1_000_000)


class MessagePatch(BaseModel):
    subject: str | None = None
    is_read: bool | None = None
    folder: str | None = None


def admin_router(fake: FakeMicrosoftState) -> APIRouter:
    router = APIRouter(prefix="/_admin")

    def on_mailbox(
        address: str, answer: Callable[[Mailbox], Response], *, locked: bool = True
    ) -> Response:
        """`answer` for the mailbox (under the state lock unless it reads only the limits);
        refusals in FastAPI's {"detail"} shape, as the rest of /_admin answers."""
        guard: AbstractContextManager[Any] = fake.lock if locked else nullcontext()
        try:
            with guard:
                mailbox = fake.mailbox(address)
                if mailbox is None:
                    raise GraphFault(404, "MailboxNotFound", f"no mailbox {address}")
                return answer(mailbox)
        except GraphFault as exc:
            return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @router.post("/mailboxes")
    def create_mailbox(spec: MailboxSpec) -> Response:
        try:
            body, created = fake.create_mailbox(
                spec.address, spec.messages, spec.tenant_id, spec.spread
            )
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
        return JSONResponse(body, status_code=201 if created else 200)

    @router.post("/mailboxes/{address}/revoke")
    def revoke(address: str) -> Response:
        try:
            return JSONResponse(fake.revoke(address))
        except KeyError:
            return JSONResponse({"detail": f"no mailbox {address}"}, status_code=404)

    @router.get("/mailboxes/{address}/messages")
    def list_messages(
        address: str, folder: str | None = None, with_folders: bool = False
    ) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            body: dict[str, Any] = {"ids": mailbox.ids(_optional_folder(mailbox, folder))}
            if with_folders:
                placement = mailbox.placement()
                body["folders"] = {i: placement[i] for i in body["ids"]}
            return JSONResponse(body)

        return on_mailbox(address, answer)

    @router.get("/mailboxes/{address}/folders")
    def list_folders(address: str) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            folders = [
                {**_folder_view(f), "well_known": f.well_known, "total": mailbox.totals[f.key]}
                for f in mailbox.folders.values()
            ]
            return JSONResponse({"folders": folders})

        return on_mailbox(address, answer)

    @router.post("/mailboxes/{address}/folders")
    def create_folder(address: str, spec: NewFolder) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            parent = _optional_folder(mailbox, spec.parent)
            try:
                folder = mailbox.create_folder(spec.name, parent)
            except ValueError as exc:
                raise GraphFault(409, "ErrorFolderExists", str(exc)) from exc
            return JSONResponse(_folder_view(folder), status_code=201)

        return on_mailbox(address, answer)

    @router.get("/mailboxes/{address}/concurrency")
    def concurrency(address: str) -> Response:
        return on_mailbox(
            address, lambda m: JSONResponse(fake.limits.stats(m.address)), locked=False
        )

    @router.get("/mailboxes/{address}/requests")
    def requests(address: str) -> Response:
        return on_mailbox(
            address,
            lambda m: JSONResponse({"requests": fake.limits.requests(m.address)}),
            locked=False,
        )

    @router.put("/mailboxes/{address}/delta-gates")
    def set_gate(address: str, spec: GateSpec) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            key = _folder(mailbox, spec.folder)
            if spec.hold:
                fake.gates.hold(mailbox.address, key)
            else:
                fake.gates.release(mailbox.address, key)
            return JSONResponse({"folder": key, "held": spec.hold})

        return on_mailbox(address, answer)

    @router.get("/mailboxes/{address}/delta-gates")
    def gates(address: str) -> Response:
        return on_mailbox(
            address,
            lambda m: JSONResponse({"gates": fake.gates.state(m.address)}),
            locked=False,
        )

    @router.post("/mailboxes/{address}/limits/reset")
    def reset_limits(address: str) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            fake.limits.reset(mailbox.address)
            return JSONResponse({"ok": True})

        return on_mailbox(address, answer, locked=False)

    @router.post("/mailboxes/{address}/messages")
    def add_messages(address: str, spec: AddMessages) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            ids = mailbox.add(spec.count, _folder(mailbox, spec.folder))
            return JSONResponse({"ids": ids}, status_code=201)

        return on_mailbox(address, answer)

    @router.patch("/mailboxes/{address}/messages/{message_id}")
    def patch_message(address: str, message_id: str, patch: MessagePatch) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            _message(mailbox, message_id)
            message = mailbox.update(
                message_id,
                subject=patch.subject,
                is_read=patch.is_read,
                folder_key=_optional_folder(mailbox, patch.folder),
            )
            return JSONResponse(
                {
                    "id": message.immutable_id,
                    "folder": message.folder_key,
                    "subject": message.data["subject"],
                    "is_read": message.data["isRead"],
                }
            )

        return on_mailbox(address, answer)

    @router.delete("/mailboxes/{address}/messages/{message_id}")
    def delete_message(address: str, message_id: str) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            mailbox.delete(_message(mailbox, message_id))
            return Response(status_code=204)

        return on_mailbox(address, answer)

    @router.post("/mailboxes/{address}/expire-delta")
    def expire_delta(address: str) -> Response:
        def answer(mailbox: Mailbox) -> Response:
            mailbox.delta_epoch += 1
            return JSONResponse({"address": mailbox.address, "delta_epoch": mailbox.delta_epoch})

        return on_mailbox(address, answer)

    @router.post("/tokens/expire")
    def expire_tokens() -> dict[str, int]:
        return {"expired": fake.expire_access_tokens()}

    subscriptions = fake.subscriptions

    @router.get("/subscriptions")
    def list_subscriptions(address: str | None = None) -> dict[str, Any]:
        listed = [
            s.view() | {"address": s.address}
            for s in subscriptions.listing()
            if address is None or s.address == address.lower()
        ]
        return {"subscriptions": listed, "stats": subscriptions.stats_view()}

    @router.post("/subscriptions/{subscription_id}/lifecycle")
    def lifecycle(subscription_id: str, spec: LifecycleSpec) -> Response:
        try:
            subscription = subscriptions.lifecycle(subscription_id, spec.event)
        except GraphFault as exc:
            return JSONResponse({"detail": exc.message}, status_code=exc.status)
        return JSONResponse({"id": subscription.id, "event": spec.event})

    @router.post("/subscriptions/{subscription_id}/expire")
    def expire_subscription(subscription_id: str) -> Response:
        if not subscriptions.expire(subscription_id):
            return JSONResponse({"detail": "no such subscription"}, status_code=404)
        return JSONResponse({"id": subscription_id, "expired": True})

    @router.put("/notifications")
    def control_notifications(spec: NotificationControl) -> dict[str, int]:
        return subscriptions.control(spec.drop, spec.duplicate)

    @router.get("/notifications")
    def notification_stats() -> dict[str, Any]:
        return subscriptions.stats_view()

    @router.post("/notifications/reset")
    def reset_notification_stats() -> dict[str, bool]:
        subscriptions.reset_stats()
        return {"ok": True}

    return router


def _folder(mailbox: Mailbox, name: str) -> str:
    """The key of the folder an admin request names by key, id or well-known name."""
    folder = mailbox.resolve_folder(name, by_key=True)
    if folder is None:
        raise GraphFault(
            400,
            "UnknownFolder",
            f"folder must be a folder key, id or one of {sorted(WELL_KNOWN_FOLDERS)}",
        )
    return folder.key


def _optional_folder(mailbox: Mailbox, name: str | None) -> str | None:
    return _folder(mailbox, name) if name else None


def _message(mailbox: Mailbox, message_id: str) -> str:
    if message_id not in mailbox.messages:
        raise GraphFault(404, "ErrorItemNotFound", f"no message {message_id}")
    return message_id


def _folder_view(folder: Folder) -> dict[str, Any]:
    return {
        "key": folder.key,
        "id": folder.folder_id,
        "display_name": folder.display_name,
        "parent_key": folder.parent_key,
    }
