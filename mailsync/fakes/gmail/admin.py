"""The /_admin surface tests and demos drive a fake Gmail through: mailboxes, messages, tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel

from mailsync.fakes.gmail.mailbox import Mailbox, NotFound
from mailsync.fakes.gmail.state import FakeGmail, credentials

T = TypeVar("T")


class MailboxIn(BaseModel):
    address: str
    messages: int | None = None


class ServiceAccountIn(BaseModel):
    client_email: str | None = None


class AddMessagesIn(BaseModel):
    count: int = 1


class LabelsIn(BaseModel):
    add_labels: list[str] = []
    remove_labels: list[str] = []


def admin_router(fake: FakeGmail) -> APIRouter:
    """Every Gmail-specific /_admin route; each mailbox route answers 404 for an unknown one."""
    router = APIRouter(prefix="/_admin", tags=["admin"])

    @router.post("/mailboxes", status_code=201)
    def add_mailbox(spec: MailboxIn, response: Response) -> dict[str, Any]:
        box, created = fake.ensure_mailbox(spec.address, spec.messages)
        if not created:
            response.status_code = 200
        return credentials(box)

    @router.post("/mailboxes/{address}/revoke")
    def revoke(address: str) -> dict[str, Any]:
        return credentials(fake.rotate_credentials(address))

    @router.post("/service-accounts", status_code=201)
    def add_service_account(
        request: Request, spec: ServiceAccountIn | None = None
    ) -> dict[str, Any]:
        token_uri = str(request.base_url).rstrip("/") + "/token"
        return fake.oauth.create_service_account(spec.client_email if spec else None, token_uri)

    @router.post("/tokens/expire")
    def expire_tokens() -> dict[str, int]:
        return {"expired": fake.oauth.expire_tokens()}

    @router.get("/mailboxes/{address}/messages")
    def list_ids(address: str, labels: bool = False) -> dict[str, Any]:
        box = fake.mailbox(address)
        with fake.lock:
            newest = box.newest_first()
            out: dict[str, Any] = {"ids": [m.id for m in newest]}
            if labels:
                out["labels"] = {m.id: list(m.label_ids) for m in newest}
            return out

    @router.post("/mailboxes/{address}/messages", status_code=201)
    def add_messages(address: str, spec: AddMessagesIn) -> dict[str, list[str]]:
        box = fake.mailbox(address)
        with fake.lock:
            return {"ids": box.add_messages(spec.count)}

    @router.get("/mailboxes/{address}/messages/{message_id}")
    def get_message(address: str, message_id: str) -> dict[str, Any]:
        return _on_message(fake, address, lambda box: box.admin_view(message_id))

    @router.patch("/mailboxes/{address}/messages/{message_id}")
    def patch_labels(address: str, message_id: str, spec: LabelsIn) -> dict[str, Any]:
        def change(box: Mailbox) -> dict[str, Any]:
            msg = box.modify_labels(message_id, spec.add_labels, spec.remove_labels)
            return {"id": msg.id, "labelIds": list(msg.label_ids), "historyId": str(msg.history_id)}

        return _on_message(fake, address, change)

    @router.delete("/mailboxes/{address}/messages/{message_id}", status_code=204)
    def delete_message(address: str, message_id: str) -> Response:
        _on_message(fake, address, lambda box: box.delete_message(message_id))
        return Response(status_code=204)

    @router.post("/mailboxes/{address}/expire-history")
    def expire_history(address: str) -> dict[str, str]:
        box = fake.mailbox(address)
        with fake.lock:
            return {"historyId": str(box.expire_history())}

    return router


def _on_message(fake: FakeGmail, address: str, action: Callable[[Mailbox], T]) -> T:
    """`action(box)` under the state lock; a message it cannot find is an admin 404."""
    box = fake.mailbox(address)
    with fake.lock:
        try:
            return action(box)
        except NotFound:
            raise HTTPException(404, "no such message") from None
