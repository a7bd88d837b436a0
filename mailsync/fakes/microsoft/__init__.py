"""Stands in for Microsoft identity and Graph mail so tests and demos run the real msal and httpx.

Identity (AAD v2):
    GET  /{tenant}/v2.0/.well-known/openid-configuration     op "openid-configuration"
    POST /{tenant}/oauth2/v2.0/token                          op "token"
         grant_type=client_credentials (scope <graph>/.default), refresh_token, authorization_code
         (PKCE checked) or the device_code grant (delegated)
    GET  /{tenant}/oauth2/v2.0/authorize: approves at once (302 with code and state) when
         login_hint names a mailbox of the tenant, else a one-button consent page
    POST /{tenant}/oauth2/v2.0/devicecode, and its verification page /common/oauth2/deviceauth
    PUT  /_admin/mailboxes/{address}/consent {"deny"?, "untick"?}; POST
         /_admin/device-codes/{user_code}/approve {"address"} (what the user does on the page)
Graph (/v1.0, also with /me and OData key segments such as users('x')/mailFolders('inbox')):
    GET  /v1.0/users/{upn}/mailFolders/{folder}/messages/delta   op "delta" (one per page)
    GET  /v1.0/users/{upn}/mailFolders                           op "mailFolders" (top level)
    GET  /v1.0/users/{upn}/mailFolders/{folder}/childFolders     op "childFolders"
    GET  /v1.0/users/{upn}/mailFolders/{folder}                  op "mailFolder"
    Folder lists come $top (default 10) at a time, linked by @odata.nextLink ($skip); a folder
    is named by a well-known name (inbox, sentitems, ..., msgfolderroot) or its id.
    At most 4 requests per mailbox are served at once: the 5th concurrent one is answered 429
    ApplicationThrottled "over its MailboxConcurrency limit" with Retry-After, as Outlook does.
Change notifications (subscriptions.py, subscribe.py):
    POST   /v1.0/subscriptions            {changeType, notificationUrl, lifecycleNotificationUrl?,
                                           resource: users/{upn}/messages, expirationDateTime,
                                           clientState?}; 201 once the URLs echoed the
                                           validationToken (text/plain, 200, within 10 s)
    GET|PATCH|DELETE /v1.0/subscriptions/{id}   read, renew (expirationDateTime), delete
    At most 4,230 minutes; an expired subscription is gone (404). Every created, updated and
    deleted message of a subscribed mailbox is POSTed to notificationUrl as Graph's
    {"value": [{subscriptionId, changeType, resource, resourceData, clientState, tenantId}]}.
Every mailbox has the five well-known folders plus user-made ones, some nested: Inbox/Newsletters,
Projects/{Falcon/Design, Roadmap}, Receipts.
Admin (besides FakeControl's /_admin/stats, /_admin/stats/reset, /_admin/faults):
    POST   /_admin/mailboxes                   {"address", "messages"?, "tenant_id"?, "spread"?}
           spread=true seeds messages over every folder (else inbox and sent items only);
           100,000 messages take well under a second
    POST   /_admin/mailboxes/{address}/revoke   every refresh/delegated token of it -> refused
           (invalid_grant AADSTS50173); the answer carries the new delegated credentials
    GET    /_admin/mailboxes/{address}/messages[?folder=][&with_folders=true]
           {"ids": [...]} (+ "folders": {id: folder id} with with_folders)
    POST   /_admin/mailboxes/{address}/messages               {"count", "folder"} -> {"ids"}
    PATCH  /_admin/mailboxes/{address}/messages/{id}          {"subject"?, "is_read"?, "folder"?}
    DELETE /_admin/mailboxes/{address}/messages/{id}
    GET    /_admin/mailboxes/{address}/folders                -> {"folders": [{key, id, ...}]}
    POST   /_admin/mailboxes/{address}/folders                {"name", "parent"?} -> folder
    POST   /_admin/mailboxes/{address}/expire-delta           every delta/skip token so far -> 410
    GET    /_admin/mailboxes/{address}/concurrency            {"limit", "in_flight", "peak",
                                                               "rejected"}
    GET    /_admin/mailboxes/{address}/requests               recent Graph requests (path, query,
                                                               Prefer) of that mailbox
    POST   /_admin/mailboxes/{address}/limits/reset           forget peak, rejections, requests
    PUT    /_admin/mailboxes/{address}/delta-gates            {"folder", "hold"}: hold (at most
                                                               20 s) or release the folder's
                                                               delta calls before they are answered
    GET    /_admin/mailboxes/{address}/delta-gates            {"gates": {key: {"held", "waiting",
                                                               "answered"}}}
    POST|GET|DELETE /_admin/mailboxes/{address}/faults        share-based faults (429 / 500 / 503
                                                               with Retry-After, slow_ms) of
                                                               mailsync.fakes.faults, per mailbox
    POST   /_admin/tokens/expire                              every access token so far -> 401
    GET    /_admin/subscriptions                              {"subscriptions": [...], "stats"}
    POST   /_admin/subscriptions/{id}/lifecycle               {"event": reauthorizationRequired
                                                               | subscriptionRemoved | missed}
    POST   /_admin/subscriptions/{id}/expire                  lapses now (no more notifications)
    PUT    /_admin/notifications                              {"drop"?: n, "duplicate"?: n}: the
                                                               next n notifications dropped/sent
                                                               twice; GET: the delivery stats
Admin folder names are keys ("inbox", "projects/falcon"), well-known names or folder ids; admin
message ids are immutable ids, the ones Graph returns under `Prefer: IdType="ImmutableId"`.

One FakeMicrosoftState (state) holds it all; identity, graph (every Graph call's one path, to
delta and folders) and admin route to it; mailbox and content make the mail.
"""

from __future__ import annotations

from fastapi import FastAPI

from mailsync.fakes.consent import consent_admin_router
from mailsync.fakes.faults import mailbox_admin_router
from mailsync.fakes.microsoft.admin import admin_router
from mailsync.fakes.microsoft.consent import consent_router
from mailsync.fakes.microsoft.graph import graph_router
from mailsync.fakes.microsoft.identity import identity_router
from mailsync.fakes.microsoft.limits import MAILBOX_CONCURRENCY
from mailsync.fakes.microsoft.state import FakeMicrosoftState
from mailsync.fakes.microsoft.subscribe import subscriptions_router

__all__ = ["create_app"]


def create_app(
    seed_messages: int = 50,
    seed: int = 0,
    *,
    token_lifetime: int = 3599,
    mailbox_concurrency: int = MAILBOX_CONCURRENCY,
) -> FastAPI:
    """A fresh fake with its own state; `app.state.microsoft`, `app.state.control`,
    `app.state.faults` and `app.state.limits` expose it."""
    app = FastAPI(title="mailsync fake Microsoft identity platform + Graph")
    fake = FakeMicrosoftState(seed, seed_messages, token_lifetime, mailbox_concurrency)
    app.state.microsoft = fake
    app.state.control = fake.control
    app.state.faults = fake.faults
    app.state.limits = fake.limits
    # In this order: the catch-all for unknown Graph paths must come after the Graph routes.
    app.include_router(fake.control.router())
    app.include_router(mailbox_admin_router(fake.faults, exists=fake.exists))
    app.include_router(identity_router(fake))
    app.include_router(consent_router(fake))
    app.include_router(consent_admin_router(fake.consent, fake.exists))
    app.include_router(subscriptions_router(fake))
    app.include_router(graph_router(fake))
    app.include_router(admin_router(fake))
    return app
