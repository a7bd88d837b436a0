"""A fake Gmail (OAuth token endpoint, REST, batch) speaking the real wire formats, so the real
google-api-python-client and google-auth can be tested against it over HTTPS.

Besides FakeControl's operation counters and queued faults, each mailbox can have
- a fault plan (mailsync.fakes.faults): a seeded share of its API calls, batch parts included,
  fail with 429/5xx/403 in Google's error shape, and/or every call is slowed down;
- a per-user quota in units per "minute" (`quota_window_seconds` long, 60 unless shrunk for
  tests) charged at Gmail's documented per-method costs, batch parts one by one; a call over
  it is refused with 429 rateLimitExceeded or 403 userRateLimitExceeded, with Retry-After.

OAuth: POST /token (refresh, JWT and authorization-code grants), POST /revoke (RFC 7009),
GET /o/oauth2/v2/auth: a registered client's consent; with a login_hint naming a mailbox it
approves at once (302 to redirect_uri with code, state and the granted scope), else it shows
a one-button consent page (POSTed back to the same path). Codes are single-use, PKCE (S256)
is checked at the exchange, and the refresh tokens of these grants end with a revocation.
    POST   /_admin/oauth-clients                         {"redirect_uris"} -> client_id, secret
    PUT    /_admin/mailboxes/{address}/consent           {"deny"?, "untick"?: [scope]}

Admin (besides /_admin/stats, /_admin/stats/reset, /_admin/faults):
    POST   /_admin/mailboxes                             {"address", "messages"?} -> credentials
    POST   /_admin/mailboxes/{address}/revoke            new refresh token, tokens dropped
    POST   /_admin/service-accounts                      a key file for domain-wide delegation
    POST   /_admin/tokens/expire                         every access token so far -> 401
    GET    /_admin/mailboxes/{address}/messages[?labels=true]  {"ids"[, "labels": {id: [...]}]}
    POST   /_admin/mailboxes/{address}/messages          {"count"} -> {"ids"}
    GET    /_admin/mailboxes/{address}/messages/{id}     the message as the fake sees it
    PATCH  /_admin/mailboxes/{address}/messages/{id}     {"add_labels", "remove_labels"}
    DELETE /_admin/mailboxes/{address}/messages/{id}
    POST   /_admin/mailboxes/{address}/expire-history    every history id so far -> 404
    POST   /_admin/mailboxes/{address}/faults            FaultPlan (share, statuses, ...)
    GET    /_admin/mailboxes/{address}/faults            the plan and its counters
    DELETE /_admin/mailboxes/{address}/faults
    PUT    /_admin/mailboxes/{address}/quota             {"units_per_minute": int|null, "status"?}
    GET    /_admin/mailboxes/{address}/quota             limit, units in window, charged, rejected

Push (pubsub.py, watch.py): POST /gmail/v1/users/{u}/watch {topicName} -> {historyId,
expiration} (7 days; the topic must have a push subscription here), POST .../stop; every
change of a watched mailbox is pushed to the topic's push subscriptions in Pub/Sub's format
with an OIDC token signed by the fake's key, whose certificate GET /oauth2/v1/certs serves.
    PUT    /_admin/pubsub/subscriptions  {name, topic, endpoint, service_account, audience?}
    DELETE /_admin/pubsub/subscriptions/{name}
    PUT    /_admin/pubsub/control        {"drop"?: n, "duplicate"?: n} the next n pushes
    GET    /_admin/pubsub                watches, subscriptions, stats

One FakeGmail (state) holds it all; oauth (POST /token), rest (every Gmail call's one path,
through the OPERATIONS table), batch (Google's multipart batches, each part through rest) and
admin route to it; mailbox, message and seed make the mail, errors shapes the refusals.
"""

from __future__ import annotations

from fastapi import FastAPI

from mailsync.fakes.consent import consent_admin_router
from mailsync.fakes.control import FakeControl
from mailsync.fakes.faults import QuotaMeter, mailbox_admin_router
from mailsync.fakes.gmail.admin import admin_router
from mailsync.fakes.gmail.batch import batch_router
from mailsync.fakes.gmail.consent import consent_router
from mailsync.fakes.gmail.errors import ApiResponse, google_error
from mailsync.fakes.gmail.mailbox import Mailbox, NotFound
from mailsync.fakes.gmail.oauth import FakeOAuth, token_router
from mailsync.fakes.gmail.rest import QUOTA_COSTS, rest_router
from mailsync.fakes.gmail.state import FakeGmail
from mailsync.fakes.gmail.watch import watch_router

__all__ = [
    "QUOTA_COSTS",
    "ApiResponse",
    "FakeGmail",
    "FakeOAuth",
    "Mailbox",
    "NotFound",
    "create_app",
    "google_error",
]


def create_app(
    seed_messages: int = 50,
    seed: int = 0,
    token_lifetime: int = 3599,
    *,
    quota_units_per_minute: int | None = None,
    quota_window_seconds: float = 60.0,
    quota_status: int = 429,
) -> FastAPI:
    """A fresh fake Gmail; state lives on `app.state.gmail`, counters on `app.state.control`
    (and `app.state.faults`, `app.state.quota`).

    `quota_units_per_minute` (None: no limit, usage still counted) is every mailbox's initial
    per-user quota per `quota_window_seconds`; refusals use `quota_status` (429 or 403)."""
    if quota_status not in (403, 429):
        raise ValueError("quota_status must be 403 or 429")
    app = FastAPI(title="fake gmail")
    control = FakeControl()
    quota = QuotaMeter(quota_units_per_minute, quota_window_seconds, quota_status)
    fake = FakeGmail(control, seed_messages, seed, token_lifetime, quota)
    app.state.gmail = fake
    app.state.control = control
    app.state.faults = fake.faults
    app.state.quota = fake.quota
    app.include_router(control.router())
    app.include_router(mailbox_admin_router(fake.faults, fake.quota, fake.exists))
    app.include_router(token_router(fake.oauth))
    app.include_router(consent_router(fake.oauth.consent))
    app.include_router(consent_admin_router(fake.oauth.consent.book, fake.exists))
    app.include_router(watch_router(fake))
    app.include_router(rest_router(fake))
    app.include_router(batch_router(fake))
    app.include_router(admin_router(fake))
    return app
