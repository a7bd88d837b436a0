"""Everything one fake Gmail knows: its mailboxes, OAuth tokens, counters, faults and quotas."""

from __future__ import annotations

import secrets
import threading
from typing import Any

from fastapi import HTTPException

from mailsync.fakes.control import FakeControl
from mailsync.fakes.faults import MailboxFaults, QuotaMeter
from mailsync.fakes.gmail.mailbox import Mailbox
from mailsync.fakes.gmail.oauth import FakeOAuth
from mailsync.fakes.gmail.pubsub import FakePubSub


class FakeGmail:
    """All state of one fake Gmail service; every public method is safe to call from any thread.

    The mailboxes sit under `lock` (shared with `oauth`); `control` counts and faults calls per
    operation, `faults` per mailbox, and `quota` charges each mailbox's per-user quota."""

    def __init__(
        self,
        control: FakeControl,
        seed_messages: int,
        seed: int,
        token_lifetime: int,
        quota: QuotaMeter | None = None,
    ) -> None:
        self.control = control
        self.seed_messages = seed_messages
        self.seed = seed
        self.lock = threading.RLock()
        self.mailboxes: dict[str, Mailbox] = {}
        self.oauth = FakeOAuth(control, self.lock, self.mailboxes, token_lifetime)
        self.faults = MailboxFaults()
        self.quota = quota or QuotaMeter()
        self.pubsub = FakePubSub()

    def exists(self, address: str) -> bool:
        with self.lock:
            return address.lower() in self.mailboxes

    def mailbox(self, address: str) -> Mailbox:
        """The mailbox at `address`; an admin 404 when there is none."""
        with self.lock:
            box = self.mailboxes.get(address.lower())
            if box is None:
                raise HTTPException(404, f"no mailbox {address}")
            return box

    def ensure_mailbox(self, address: str, messages: int | None) -> tuple[Mailbox, bool]:
        """The mailbox at `address`, seeded with `messages` (default: the app's) if new; True
        when it was created."""
        with self.lock:
            box = self.mailboxes.get(address.lower())
            if box is not None:
                return box, False
            count = self.seed_messages if messages is None else messages
            box = Mailbox.create(address, self.seed, count)
            box.on_change = self.pubsub.changed
            self.mailboxes[address.lower()] = box
            return box, True

    def rotate_credentials(self, address: str) -> Mailbox:
        """A new refresh token for the mailbox; its access tokens stop working."""
        with self.lock:
            box = self.mailbox(address)
            box.refresh_token = "1//0" + secrets.token_urlsafe(40)
            self.oauth.drop_tokens(box.address)
            self.oauth.consent.revoke_address(box.address)
            return box


def credentials(box: Mailbox) -> dict[str, Any]:
    """What /_admin hands out for a mailbox: the OAuth client and refresh token that open it."""
    return {
        "address": box.address,
        "credentials": {
            "type": "oauth",
            "client_id": box.client_id,
            "client_secret": box.client_secret,
            "refresh_token": box.refresh_token,
        },
    }
