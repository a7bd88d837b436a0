"""Which mailboxes a Gmail push is about, once its OIDC token proves Pub/Sub sent it for us."""

from __future__ import annotations

from functools import lru_cache

import sqlalchemy as sa
from sqlmodel import Session, col, select

from mailsync.core.push.state import PushStatus
from mailsync.db.tables import Mailbox, MailboxPush
from mailsync.errors import PushVerificationError
from mailsync.providers.gmail.push import GmailPush, PushTokenVerifier, parse_push
from mailsync.settings import Settings

__all__ = ["GmailPush", "mailboxes_for", "parse_push", "verify_token"]

PUSH_PATH = "/v1/push/gmail"


@lru_cache(maxsize=8)
def _verifier(certs_url: str, ca_bundle: str | None) -> PushTokenVerifier:
    # One per process and key URL: the keys are cached between pushes.
    return PushTokenVerifier(certs_url, ca_bundle)


def audience(settings: Settings) -> str | None:
    """The `aud` our push subscription's tokens carry: configured, or our push URL."""
    base = settings.push_base_url
    return settings.gmail_push_audience or (base + PUSH_PATH if base else None)


def verify_token(settings: Settings, authorization: str | None) -> None:
    """PushVerificationError unless `authorization` is Bearer <Pub/Sub's OIDC token for us>;
    TransientProviderError when Google's keys cannot be read now."""
    scheme, _, token = (authorization or "").partition(" ")
    aud, account = audience(settings), settings.gmail_push_service_account
    if scheme.lower() != "bearer" or not token.strip():
        raise PushVerificationError("missing bearer token")
    if aud is None or account is None:
        raise PushVerificationError("Gmail push is not configured")
    ca = str(settings.provider_ca_bundle) if settings.provider_ca_bundle else None
    _verifier(settings.gmail_push_certs_url, ca).verify(token.strip(), aud, account)


def mailboxes_for(session: Session, push: GmailPush) -> list[Mailbox]:
    """The Gmail mailboxes of that address whose watch we opened (one per workspace that
    connected it); a mailbox whose push is off is not ours to sync on a push."""
    query = (
        select(Mailbox)
        .join(MailboxPush, col(MailboxPush.mailbox_id) == col(Mailbox.id))
        .where(
            col(Mailbox.provider) == "gmail",
            sa.func.lower(col(Mailbox.address)) == push.email_address.lower(),
            col(MailboxPush.status) != PushStatus.off.value,
        )
    )
    return list(session.exec(query))
