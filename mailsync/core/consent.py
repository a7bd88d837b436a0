"""The consent flow's state: starting one for a workspace (POST /v1/mailboxes/connect) and
completing it at the callback, once. A state is unguessable (256 random bits), stored only as
its SHA-256 hash, bound to the workspace that started it, single-use and valid 10 minutes."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode, urlsplit, urlunsplit

from sqlmodel import Session, col, delete, select, update

from mailsync.core import mailboxes, workspaces
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import OAuthState, as_utc, iso
from mailsync.errors import ConsentInputError, OAuthFlowError, UnknownStateError
from mailsync.providers.base import ProviderEndpoints
from mailsync.providers.consent import ConsentClient, finish_consent, start_consent
from mailsync.settings import Settings

STATE_TTL = timedelta(minutes=10)
_KEEP_USED = timedelta(days=1)  # expired states are deleted after this (by the next start)


@dataclass(frozen=True)
class ConsentConfig:
    clients: dict[str, ConsentClient]  # the providers whose app registration is configured
    callback_url: str | None
    allowlist: tuple[str, ...]
    endpoints: ProviderEndpoints

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsentConfig:
        clients: dict[str, ConsentClient] = {}
        if settings.google_client_id and settings.google_client_secret:
            clients["gmail"] = ConsentClient(
                settings.google_client_id, settings.google_client_secret.get_secret_value()
            )
        if settings.microsoft_client_id and settings.microsoft_client_secret:
            clients["microsoft"] = ConsentClient(
                settings.microsoft_client_id,
                settings.microsoft_client_secret.get_secret_value(),
                settings.microsoft_tenant,
            )
        return cls(
            clients, settings.oauth_callback_url, settings.oauth_redirects,
            settings.provider_endpoints,
        )  # fmt: skip


_SETTING = {"gmail": "MAILSYNC_GOOGLE_CLIENT_ID/_SECRET", "microsoft": "MAILSYNC_MICROSOFT_*"}


def _hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def redirect_allowed(uri: str, allowlist: tuple[str, ...]) -> bool:
    """Scheme, host, port and path equal to an entry's; a query is kept, a fragment refused."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    if parts.fragment or parts.scheme not in ("https", "http") or not parts.netloc:
        return False
    bare = urlunsplit((parts.scheme, parts.netloc.lower(), parts.path or "/", "", ""))
    for entry in allowlist:
        e = urlsplit(entry)
        if bare == urlunsplit((e.scheme, e.netloc.lower(), e.path or "/", "", "")):
            return True
    return False


def with_params(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


@dataclass(frozen=True)
class Started:
    authorization_url: str
    expires_at: str


def begin(
    session: Session,
    box: CredentialBox,
    config: ConsentConfig,
    workspace_id: str,
    provider: str,
    redirect_uri: str,
    login_hint: str | None,
    mailbox_id: str | None,
    now: datetime,
) -> Started:
    """A consent flow for the workspace; ConsentInputError (its `param`) when it cannot be."""
    client = config.clients.get(provider)
    if client is None or config.callback_url is None:
        raise _invalid(f"{provider} consent is not set up on this server ({_SETTING[provider]} "
                       "and MAILSYNC_PUBLIC_URL)", "provider")  # fmt: skip
    if not redirect_allowed(redirect_uri, config.allowlist):
        raise _invalid("redirect_uri is not on MAILSYNC_OAUTH_REDIRECT_ALLOWLIST", "redirect_uri")
    if login_hint is not None and "@" not in login_hint:
        raise _invalid("login_hint must be an email address", "login_hint")
    if mailbox_id is not None:
        mailbox = mailboxes.find(session, workspace_id, mailbox_id)
        if mailbox is None:  # another workspace's too
            raise _invalid(f"no mailbox with id '{mailbox_id[:64]}'", "mailbox_id")
        if mailbox.provider != provider:
            raise _invalid(f"mailbox {mailbox_id} is a {mailbox.provider} mailbox", "provider")
        login_hint = login_hint or mailbox.address
    state = secrets.token_urlsafe(32)
    started = start_consent(
        provider, client, config.endpoints, config.callback_url, state, login_hint
    )
    expires = now + STATE_TTL
    session.exec(delete(OAuthState).where(col(OAuthState.expires_at) < now - _KEEP_USED))  # type: ignore[call-overload]
    session.add(
        OAuthState(
            state_hash=_hash(state), workspace_id=workspace_id, provider=provider,
            redirect_uri=redirect_uri, mailbox_id=mailbox_id,
            flow_encrypted=box.seal(started.flow), created_at=now, expires_at=expires,
        )
    )  # fmt: skip
    session.flush()
    return Started(started.authorization_url, iso(expires) or "")


def _invalid(message: str, param: str) -> ConsentInputError:
    return ConsentInputError(message, param=param)


def complete(
    database_url: str,
    box: CredentialBox,
    config: ConsentConfig,
    response: Mapping[str, str],
    now: datetime,
) -> str:
    """The URL to send the user to: the flow's redirect_uri with mailbox_id, or with error and
    error_description. UnknownStateError when the state names no flow."""
    state = response.get("state") or ""
    with session_scope(database_url) as session:
        row = session.exec(select(OAuthState).where(OAuthState.state_hash == _hash(state))).first()
        if not state or row is None:
            raise UnknownStateError("unknown or forged state: start again from the application")
        # Single use: of two callbacks with this state only one claims it.
        claimed = session.exec(  # type: ignore[call-overload]
            update(OAuthState)
            .where(col(OAuthState.id) == row.id, col(OAuthState.used_at).is_(None))
            .values(used_at=now)
        ).rowcount
        redirect_uri = row.redirect_uri
        flow = box.open(row.flow_encrypted)
        expires = as_utc(row.expires_at)
    try:
        if claimed != 1:
            raise OAuthFlowError("invalid_request", "this consent was already completed; "
                                 "start again to connect another mailbox")  # fmt: skip
        if expires is None or expires <= now:
            raise OAuthFlowError("invalid_request", "the consent took longer than 10 minutes; "
                                 "start again")  # fmt: skip
        client = config.clients.get(row.provider)
        if client is None or config.callback_url is None:
            raise OAuthFlowError("server_error", f"{row.provider} consent is no longer set up")
        grant = finish_consent(
            row.provider, client, config.endpoints, flow, config.callback_url, response
        )
        mailbox_id = _store(database_url, box, row, grant.address, grant.credentials)
    except OAuthFlowError as exc:
        return with_params(redirect_uri, {"error": exc.error, "error_description": exc.message})
    return with_params(redirect_uri, {"mailbox_id": mailbox_id})


def _store(
    database_url: str, box: CredentialBox, row: OAuthState, address: str, credentials: dict
) -> str:
    """Connect (or re-connect) the mailbox in the flow's workspace; its id."""
    with session_scope(database_url) as session:
        if row.mailbox_id is not None:
            mailbox = mailboxes.find(session, row.workspace_id, row.mailbox_id)
            if mailbox is None:
                raise OAuthFlowError("invalid_request", "the mailbox to re-authorize is gone")
            if mailbox.address.lower() != address.lower():
                raise OAuthFlowError(
                    "access_denied",
                    "the account signed in is not the mailbox's; sign in with the mailbox's own",
                )
            address = mailbox.address
        try:
            mailbox, _ = workspaces.connect_mailbox(
                session, box, row.workspace_id, row.provider, address, credentials
            )
        except ValueError:
            raise OAuthFlowError("server_error", "the grant could not be stored") from None
        return mailbox.id
