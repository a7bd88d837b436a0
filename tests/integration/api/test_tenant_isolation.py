"""Tenant isolation and scopes, for every route the app serves.

The route list is read from the app itself (and checked against the OpenAPI document), so a
route added without an entry in `ROUTES` fails `test_every_route_is_in_the_table` first.
Isolation is decided before anything talks to Prefect, so these tests use the real app with an
unreachable Prefect (the `offline_client` pattern) and need no stack.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import Session, col, select

from mailsync.api.app import create_app
from mailsync.core import apikeys
from mailsync.core.search import ids
from mailsync.core.sync import index
from mailsync.db import get_engine, session_scope
from mailsync.db.tables import (
    ApiKey,
    Mailbox,
    SyncJob,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)
from mailsync.providers.base import MessageRecord
from mailsync.settings import Settings
from mailsync.webhooks.store import ENDPOINT_DISABLED
from tests.support.api import make_tenant
from tests.support.receiver import finish_job, new_endpoint, running_job
from tests.support.stack import FakeProviders

SECRET_SUBJECT = "Merger plans"  # the victim's message, never shown to another workspace
HOOK = "http://127.0.0.1:9/hook"  # never called: Prefect is down, so nothing is delivered
READ_EMAIL = ("read:email", "write:email")
READ_HOOKS = ("read:webhooks", "write:webhooks")
READ_MAILBOXES = ("read:mailboxes", "write:mailboxes")
APP_REDIRECT = "https://app.example/connected"  # on the consent allow-list of `client`

# The one table: every route of the served app and the scopes of which a key needs one
# (None: public, no key needed). Documented in README.md ("The API", "Webhooks").
ROUTES: dict[tuple[str, str], tuple[str, ...] | None] = {
    ("GET", "/openapi.json"): None,
    ("GET", "/docs"): None,
    ("GET", "/docs/oauth2-redirect"): None,
    ("GET", "/redoc"): None,
    ("GET", "/health"): None,
    # The providers' push endpoints: no key (SELF_PROVEN).
    ("POST", "/v1/push/microsoft"): None,
    ("POST", "/v1/push/microsoft/lifecycle"): None,
    ("POST", "/v1/push/gmail"): None,
    ("POST", "/v1/email/sync"): ("write:email",),
    ("GET", "/v1/email/sync/{job_id}"): READ_EMAIL,
    ("GET", "/v1/email/messages"): READ_EMAIL,
    ("GET", "/v1/email/messages/{message_id}"): READ_EMAIL,
    ("POST", "/v1/webhooks"): ("write:webhooks",),
    ("GET", "/v1/webhooks"): READ_HOOKS,
    ("GET", "/v1/webhooks/notices"): READ_HOOKS,
    ("GET", "/v1/webhooks/{endpoint_id}"): READ_HOOKS,
    ("DELETE", "/v1/webhooks/{endpoint_id}"): ("write:webhooks",),
    ("POST", "/v1/webhooks/{endpoint_id}/rotate-secret"): ("write:webhooks",),
    ("POST", "/v1/webhooks/{endpoint_id}/enable"): ("write:webhooks",),
    ("GET", "/v1/webhooks/{endpoint_id}/deliveries"): READ_HOOKS,
    ("POST", "/v1/webhooks/deliveries/{delivery_id}/replay"): ("write:webhooks",),
    ("GET", "/v1/mailboxes"): READ_MAILBOXES,
    ("GET", "/v1/mailboxes/{mailbox_id}"): READ_MAILBOXES,
    ("DELETE", "/v1/mailboxes/{mailbox_id}"): ("write:mailboxes",),
    ("POST", "/v1/mailboxes/connect"): ("write:mailboxes",),
    ("GET", "/v1/oauth/callback"): None,  # the state is its credential (test_oauth_connect.py)
}
# A valid body where a route takes one (the scope check must be what refuses the request).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/email/sync"): {},
    ("POST", "/v1/webhooks"): {"url": HOOK},
    ("POST", "/v1/webhooks/{endpoint_id}/rotate-secret"): {"overlap_seconds": 60},
    ("POST", "/v1/mailboxes/connect"): {"provider": "gmail", "redirect_uri": APP_REDIRECT},
}
OBJECT_PARAMS = ("job_id", "endpoint_id", "delivery_id", "message_id", "mailbox_id")


# Public routes whose requests prove themselves instead of by a key (a Graph subscription's
# clientState, our Pub/Sub subscription's OIDC token): one that does not is 401, never 403,
# and they document that 401 (README, "Push").
SELF_PROVEN = {
    ("POST", "/v1/push/microsoft"),
    ("POST", "/v1/push/microsoft/lifecycle"),
    ("POST", "/v1/push/gmail"),
}


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route the app answers, included routers expanded (HEAD, which
    Starlette adds to every GET, left out)."""
    found: set[tuple[str, str]] = set()

    def walk(routes: Any) -> None:
        for route in routes:
            contexts = getattr(route, "effective_route_contexts", None)
            if contexts is not None:  # FastAPI >= 0.150: an included router
                walk(contexts())
            elif getattr(route, "original_router", None) is not None:
                walk(route.original_router.routes)
            else:
                for method in route.methods or ():
                    if method != "HEAD":
                        found.add((method, route.path))

    walk(app.routes)
    return found


def error_of(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["request_id"] == response.headers["x-request-id"]


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The real app, loopback webhook URLs allowed, Prefect unreachable."""
    local = settings.model_copy(
        update={
            "webhook_allow_loopback": True,
            "prefect_api_url": "http://127.0.0.1:9/api",
            # Consent set up, so a key with write:mailboxes gets a flow (201), not a 400.
            "google_client_id": "mailsync-test.apps.googleusercontent.com",
            "google_client_secret": SecretStr("GOCSPX-test"),
            "public_url": "https://mailsync.test",
            "oauth_redirect_allowlist": APP_REDIRECT,
        }
    )
    with TestClient(create_app(local), raise_server_exceptions=False) as c:
        yield c


@dataclass
class Victim:
    """Workspace B and one of each of its objects."""

    workspace_id: str
    key: str  # all scopes, for the positive control
    job_id: str
    endpoint_id: str  # active, with a delivery and an attempt
    disabled_endpoint_id: str
    delivery_id: str
    notice_id: str
    address: str
    message_id: str  # in the live index of its Gmail mailbox
    mailbox_id: str  # that Gmail mailbox

    def ids(self) -> dict[str, list[str]]:
        return {
            "job_id": [self.job_id],
            "endpoint_id": [self.endpoint_id, self.disabled_endpoint_id],
            "delivery_id": [self.delivery_id],
            "message_id": [self.message_id],
            "mailbox_id": [self.mailbox_id],
        }

    def identifiers(self) -> list[str]:
        return [
            self.workspace_id, self.job_id, self.endpoint_id, self.disabled_endpoint_id,
            self.delivery_id, self.notice_id, self.address, self.message_id, SECRET_SUBJECT,
            self.mailbox_id,
        ]  # fmt: skip


def all_scopes_key(settings: Settings, workspace_id: str) -> str:
    with session_scope(settings.resolved_database_url) as session:
        return apikeys.create_api_key(session, workspace_id, sorted(apikeys.SCOPES))[1]


def make_victim(settings: Settings, fakes: FakeProviders) -> Victim:
    tenant = make_tenant(settings, fakes, providers=("gmail",))
    ws, url = tenant.workspace_id, settings.resolved_database_url
    endpoint, _ = new_endpoint(settings, ws, HOOK)
    disabled, _ = new_endpoint(settings, ws, HOOK + "/off")
    job_id = running_job(url, ws)
    finish_job(url, job_id)  # the outbox: one delivery per endpoint
    with session_scope(url) as session:
        delivery = session.exec(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
        ).one()
        session.add(WebhookAttempt(delivery_id=delivery.id, status_code=500, latency_ms=3))
        row = session.get(WebhookEndpoint, disabled.id)
        assert row is not None
        row.status, row.disabled_at = "disabled", utcnow()
        notice = WebhookEvent(
            workspace_id=ws,
            type=ENDPOINT_DISABLED,
            subject_id=disabled.id,
            payload={"data": {"endpoint_id": disabled.id, "url": disabled.url}},
        )
        session.add(notice)
        session.flush()
        delivery_id, notice_id = delivery.id, notice.id
        mailbox = session.exec(select(Mailbox).where(Mailbox.workspace_id == ws)).one()
        record = MessageRecord("victim-1", "t-1", "ceo@victim.example", [], [], SECRET_SUBJECT)
        index.upsert(session, mailbox.id, [record], mailbox.generation)
        message_id = ids.message_id(mailbox.id, "victim-1")
        mailbox_id = mailbox.id
    return Victim(
        ws, all_scopes_key(settings, ws), job_id, endpoint.id, disabled.id, delivery_id,
        notice_id, tenant.gmail_address, message_id, mailbox_id,
    )  # fmt: skip


def snapshot(settings: Settings, workspace_id: str) -> str:
    """Every row that belongs to the workspace, as text (secrets included, encrypted)."""
    with Session(get_engine(settings.resolved_database_url)) as session:
        endpoints = select(WebhookEndpoint.id).where(WebhookEndpoint.workspace_id == workspace_id)
        deliveries = select(WebhookDelivery.id).where(
            col(WebhookDelivery.endpoint_id).in_(endpoints)
        )
        rows: list[Any] = []
        for model in (ApiKey, Mailbox, SyncJob, WebhookEndpoint, WebhookEvent):
            rows += session.exec(select(model).where(model.workspace_id == workspace_id))  # type: ignore[attr-defined]
        rows += session.exec(select(WebhookDelivery).where(col(WebhookDelivery.id).in_(deliveries)))
        rows += session.exec(
            select(WebhookAttempt).where(col(WebhookAttempt.delivery_id).in_(deliveries))
        )
        return json.dumps(sorted(json.dumps(r.model_dump(), default=str) for r in rows))


@pytest.mark.only_database("sqlite")
def test_every_route_is_in_the_table(client: TestClient) -> None:
    """The scope table covers exactly the routes the app serves, and the OpenAPI document
    agrees with it: scoped operations document 401 and 403, public ones neither, and exactly
    the operations taking an object id document 404. A new route fails here until it is
    classified (and so is covered by the isolation and scope tests below)."""
    app: Any = client.app
    assert served_routes(app) == set(ROUTES)
    spec = client.get("/openapi.json").json()
    operations = {
        (method.upper(), path): op
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }
    documented = {route for route in ROUTES if not route[1].startswith(("/docs", "/redoc"))}
    assert set(operations) == documented - {("GET", "/openapi.json")}
    for route, op in operations.items():
        scoped = ROUTES[route] is not None
        assert ("401" in op["responses"]) is (scoped or route in SELF_PROVEN), route
        assert ("403" in op["responses"]) is scoped, route
        has_object = any(f"{{{p}}}" in route[1] for p in OBJECT_PARAMS)
        assert ("404" in op["responses"]) is has_object, route
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert params <= set(OBJECT_PARAMS), (route, params)


def test_another_workspaces_objects_are_404_and_unchanged(
    client: TestClient, settings: Settings, fakes: FakeProviders
) -> None:
    """Workspace A's key with every scope, on every route: each of workspace B's objects
    (sync job, webhook endpoints active and disabled, delivery) is 404 not_found; routes
    without an object id (lists, notices, create, trigger) show nothing of B; and B's rows
    are byte-for-byte unchanged afterwards. B's own key then reaches the same objects
    (so each 404 came from the workspace check, not from a wrong URL)."""
    victim = make_victim(settings, fakes)
    attacker = make_tenant(settings, fakes, providers=("gmail",))
    key = all_scopes_key(settings, attacker.workspace_id)
    before = snapshot(settings, victim.workspace_id)
    for (method, path), _ in ROUTES.items():
        body = BODIES.get((method, path))
        param = next((p for p in OBJECT_PARAMS if f"{{{p}}}" in path), None)
        targets = (
            [path.replace(f"{{{param}}}", i) for i in victim.ids()[param]] if param else [path]
        )
        for url in targets:
            response = client.request(
                method, url, headers={"Authorization": f"Bearer {key}"}, json=body
            )
            # 503 only where Prefect is needed (it is down here); never a 500.
            assert response.status_code != 500, (url, response.text)
            if param:
                error_of(response, 404, "not_found")
            for identifier in victim.identifiers():  # the 404 may echo the id it was given
                assert identifier in url or identifier not in response.text, (url, identifier)
    assert snapshot(settings, victim.workspace_id) == before

    auth = {"Authorization": f"Bearer {victim.key}"}
    expected = [
        ("GET", f"/v1/email/sync/{victim.job_id}", 200),
        ("GET", f"/v1/email/messages/{victim.message_id}", 200),
        ("GET", f"/v1/mailboxes/{victim.mailbox_id}", 200),
        ("GET", "/v1/email/messages?q=merger", 200),
        ("GET", f"/v1/webhooks/{victim.endpoint_id}", 200),
        ("GET", f"/v1/webhooks/{victim.endpoint_id}/deliveries", 200),
        ("POST", f"/v1/webhooks/{victim.endpoint_id}/rotate-secret", 200),
        ("POST", f"/v1/webhooks/deliveries/{victim.delivery_id}/replay", 202),
        ("POST", f"/v1/webhooks/{victim.disabled_endpoint_id}/enable", 200),
        ("DELETE", f"/v1/webhooks/{victim.endpoint_id}", 204),
    ]
    for method, url, status in expected:
        assert client.request(method, url, headers=auth).status_code == status, url
    listed = client.get("/v1/webhooks/notices", headers=auth).json()["data"]
    assert [n["id"] for n in listed] == [victim.notice_id]
    found = client.get("/v1/email/messages", headers=auth).json()["data"]
    assert [m["id"] for m in found] == [victim.message_id]
    boxes = client.get("/v1/mailboxes", headers=auth).json()["data"]
    assert [m["id"] for m in boxes] == [victim.mailbox_id]
    gone = client.delete(f"/v1/mailboxes/{victim.mailbox_id}", headers=auth)
    assert gone.status_code == 200 and gone.json()["data"]["status"] == "disconnected"


def test_scopes_are_enforced_per_route(
    client: TestClient, settings: Settings, fakes: FakeProviders
) -> None:
    """For every scoped route and every single-scope key (and a key with no scope): a key
    holding none of the route's scopes gets 403 insufficient_permissions, a key holding one
    gets past the check (unknown ids then 404, Prefect being down 503, a create 201); no key
    at all is 401; public routes need no key (the push routes' requests prove themselves)."""
    tenant = make_tenant(settings, fakes, providers=("gmail",))  # so a sync is not a 403
    with session_scope(settings.resolved_database_url) as session:
        keys = {
            scope: apikeys.create_api_key(session, tenant.workspace_id, [scope] if scope else [])[1]
            for scope in (*sorted(apikeys.SCOPES), "")
        }
    unknown = {
        "job_id": "sync_unknown",
        "endpoint_id": "wh_unknown",
        "delivery_id": "whd_x",
        "message_id": "msg_unknown",
        "mailbox_id": "mbx_unknown",
    }
    for (method, path), needed in ROUTES.items():
        url = path.format(**unknown)
        body = BODIES.get((method, path))
        if (method, path) in SELF_PROVEN:  # no proof: refused (401), or not its body (400)
            assert client.request(method, url, json=body).status_code in (400, 401), url
            continue
        if needed is None:
            assert client.request(method, url, json=body).status_code not in (401, 403), url
            continue
        error_of(client.request(method, url, json=body), 401, "invalid_key")
        for scope, key in keys.items():
            response = client.request(
                method, url, headers={"Authorization": f"Bearer {key}"}, json=body
            )
            if scope in needed:
                assert response.status_code in (200, 201, 202, 204, 404, 503), (url, scope)
            else:
                error_of(response, 403, "insufficient_permissions")
