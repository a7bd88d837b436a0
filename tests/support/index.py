"""The index as readers see it and as the fakes know it, for comparing the two."""

from __future__ import annotations

from collections import Counter

from sqlmodel import Session, col, select

from mailsync.db import get_engine
from mailsync.db.tables import Mailbox, Message
from tests.support.api import Tenant
from tests.support.stack import FakeProviders, PrefectStack

MICROSOFT_FOLDERS = ("inbox", "sentitems")  # the default MAILSYNC_MICROSOFT_FOLDERS


def mailbox_row(stack: PrefectStack, tenant: Tenant, provider: str) -> Mailbox:
    with Session(get_engine(stack.settings.resolved_database_url)) as session:
        return session.exec(
            select(Mailbox).where(
                Mailbox.workspace_id == tenant.workspace_id, Mailbox.provider == provider
            )
        ).one()


def generation_rows(stack: PrefectStack, mailbox_id: str, generation: int) -> list[Message]:
    with Session(get_engine(stack.settings.resolved_database_url)) as session:
        return list(
            session.exec(
                select(Message).where(
                    Message.mailbox_id == mailbox_id, col(Message.generation) == generation
                )
            )
        )


def live_index(stack: PrefectStack, tenant: Tenant, provider: str) -> dict[str, list[str]]:
    """What readers see: message id -> labels (Gmail) or [folder id] (Microsoft); a duplicate
    row fails the test here."""
    mailbox = mailbox_row(stack, tenant, provider)
    rows = generation_rows(stack, mailbox.id, mailbox.generation)
    duplicates = [i for i, n in Counter(r.provider_message_id for r in rows).items() if n > 1]
    assert not duplicates, f"duplicate index rows: {duplicates[:5]}"
    return {r.provider_message_id: sorted(r.labels) for r in rows}


def fake_index(fakes: FakeProviders, provider: str, address: str) -> dict[str, list[str]]:
    """The same mapping as the fake knows it (Microsoft: the synced folders only)."""
    if provider == "gmail":
        return {k: sorted(v) for k, v in fakes.gmail.labels(address).items()}
    # Folders configured by well-known name are recorded under that name.
    synced = {f.id: f.key for f in fakes.microsoft.folders(address) if f.key in MICROSOFT_FOLDERS}
    placement = fakes.microsoft.placement(address)
    return {k: [synced[v]] for k, v in placement.items() if v in synced}
