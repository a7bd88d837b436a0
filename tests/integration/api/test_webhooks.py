"""`/v1/webhooks`: CRUD, scopes, isolation and the SSRF 400 through the real app; and, on the
real Prefect stack, events of API-triggered syncs reaching a verifying local receiver."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

from mailsync.api.app import create_app
from mailsync.core import apikeys, workspaces
from mailsync.db import session_scope
from mailsync.db.tables import WebhookEndpoint, utcnow
from mailsync.orchestration.runs import DELIVER_DEPLOYMENT
from mailsync.settings import Settings
from tests.support.api import make_tenant
from tests.support.receiver import Receiver, finish_job, running_job, serve_receiver
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually, job_ended

URL = "/v1/webhooks"
HOOK = "http://127.0.0.1:9/hook"  # never called in the CRUD tests


@dataclass
class Keys:
    workspace_id: str
    writer: str  # write:webhooks
    reader: str  # read:webhooks
    email: str  # write:email, read:email: no webhook scope

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.writer}"}


def make_keys(settings: Settings) -> Keys:
    workspace_id = f"ws-{secrets.token_hex(4)}"
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, workspace_id)
        keys = [
            apikeys.create_api_key(session, workspace_id, scopes)[1]
            for scopes in (["write:webhooks"], ["read:webhooks"], ["write:email", "read:email"])
        ]
    return Keys(workspace_id, *keys)


@pytest.fixture
def local_settings(settings: Settings) -> Settings:
    """The app's settings with loopback receivers allowed and Prefect unreachable."""
    return settings.model_copy(
        update={"webhook_allow_loopback": True, "prefect_api_url": "http://127.0.0.1:9/api"}
    )


@pytest.fixture
def client(local_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(local_settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def keys(local_settings: Settings) -> Keys:
    return make_keys(local_settings)


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    return error


def create(client: TestClient, keys: Keys, **body: Any) -> dict[str, Any]:
    response = client.post(URL, headers=keys.auth(), json={"url": HOOK, **body})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_create_shows_the_secret_once_and_reads_never_do(client: TestClient, keys: Keys) -> None:
    """201 with a whsec_ secret; list and get show the endpoint without any secret."""
    data = create(client, keys)
    assert data["id"].startswith("wh_") and data["secret"].startswith("whsec_")
    assert data["events"] == ["email.sync.completed", "email.sync.failed"]
    assert data["status"] == "active" and data["url"] == HOOK
    listed = client.get(URL, headers=keys.auth(keys.reader))
    assert listed.status_code == 200 and "x-ratelimit-limit" in listed.headers
    assert [e["id"] for e in listed.json()["data"]] == [data["id"]]
    one = client.get(f"{URL}/{data['id']}", headers=keys.auth(keys.reader)).json()["data"]
    for view in (*listed.json()["data"], one):
        assert "secret" not in view and data["secret"] not in str(view)


def test_scopes(client: TestClient, keys: Keys) -> None:
    """Writes need write:webhooks; reads read:webhooks or write:webhooks; email scopes give
    nothing here; no key is 401."""
    endpoint = create(client, keys, events=["email.sync.failed"])
    path = f"{URL}/{endpoint['id']}"
    for method, url in (
        ("POST", URL),
        ("DELETE", path),
        ("POST", f"{path}/rotate-secret"),
        ("POST", f"{URL}/deliveries/whd_x/replay"),
    ):
        for key in (keys.reader, keys.email):
            response = client.request(method, url, headers=keys.auth(key), json={"url": HOOK})
            error_of(response, 403, "insufficient_permissions")
    for url in (URL, path, f"{path}/deliveries", f"{URL}/notices"):
        error_of(client.get(url, headers=keys.auth(keys.email)), 403, "insufficient_permissions")
        assert client.get(url, headers=keys.auth(keys.reader)).status_code == 200
        assert client.get(url, headers=keys.auth(keys.writer)).status_code == 200
        error_of(client.get(url), 401, "invalid_key")


def test_another_workspaces_objects_are_404(
    client: TestClient, keys: Keys, local_settings: Settings
) -> None:
    """Endpoints and deliveries of another workspace do not exist for this key: 404, never
    a hint, and nothing is changed."""
    endpoint = create(client, keys)
    job_id = running_job(local_settings.resolved_database_url, keys.workspace_id)
    finish_job(local_settings.resolved_database_url, job_id)
    deliveries = client.get(f"{URL}/{endpoint['id']}/deliveries", headers=keys.auth())
    [delivery] = deliveries.json()["data"]
    other = make_keys(local_settings)
    path = f"{URL}/{endpoint['id']}"
    for method, url in (
        ("GET", path),
        ("DELETE", path),
        ("POST", f"{path}/rotate-secret"),
        ("POST", f"{path}/enable"),
        ("GET", f"{path}/deliveries"),
        ("POST", f"{URL}/deliveries/{delivery['id']}/replay"),
        ("GET", f"{URL}/wh_unknown"),
        ("GET", f"{URL}/{'x' * 5000}"),
        ("POST", f"{URL}/deliveries/{'x' * 5000}/replay"),
    ):
        error_of(client.request(method, url, headers=other.auth()), 404, "not_found")
    assert client.get(URL, headers=other.auth()).json()["data"] == []
    assert client.get(path, headers=keys.auth()).status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:10.1.1.1]/",
        "https://[fd00::1]/",
    ],
)
def test_private_address_urls_are_refused_with_a_clear_400(
    client: TestClient, keys: Keys, url: str
) -> None:
    """SSRF guard at creation: 400 invalid_request naming url and the kind of address."""
    error = error_of(
        client.post(URL, headers=keys.auth(), json={"url": url}), 400, "invalid_request"
    )
    assert error["param"] == "url" and "resolves to a" in error["message"]
    assert client.get(URL, headers=keys.auth()).json()["data"] == []


def test_loopback_and_http_are_refused_without_the_setting(settings: Settings, keys: Keys) -> None:
    """Outside MAILSYNC_WEBHOOK_ALLOW_LOOPBACK, https is required and loopback refused."""
    strict = settings.model_copy(update={"prefect_api_url": "http://127.0.0.1:9/api"})
    with TestClient(create_app(strict), raise_server_exceptions=False) as strict_client:
        for url, words in (
            ("http://127.0.0.1:8080/hook", "https"),
            ("https://127.0.0.1:8443/hook", "loopback"),
            ("https://localhost/hook", "loopback"),
        ):
            response = strict_client.post(URL, headers=keys.auth(), json={"url": url})
            error = error_of(response, 400, "invalid_request")
            assert error["param"] == "url" and words in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": HOOK, "events": ["email.sync.started"]}, "events"),
        ({"url": HOOK, "events": []}, "events"),
        ({"url": HOOK, "secret": "mine"}, "secret"),
        ({"url": 42}, "url"),
        ({}, "url"),
        ({"url": "ftp://example.com/"}, "url"),
        ({"url": "https://user:pw@example.com/"}, "url"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    client: TestClient, keys: Keys, body: dict[str, Any], param: str
) -> None:
    """Unknown event types, unknown fields and wrong values: 400 invalid_request with param."""
    error = error_of(client.post(URL, headers=keys.auth(), json=body), 400, "invalid_request")
    assert error["param"] == param


def test_malformed_json_is_400_not_500(client: TestClient, keys: Keys) -> None:
    """A body that is not JSON gets the standard 400."""
    response = client.post(
        URL, headers={**keys.auth(), "Content-Type": "application/json"}, content=b"{nope"
    )
    error_of(response, 400, "invalid_request")


def test_rotate_returns_a_new_secret_with_an_overlap(client: TestClient, keys: Keys) -> None:
    """Rotation returns the new secret once; the old one keeps signing for the overlap
    (default 24 h, or as asked; 0 ends it at once); a bad overlap is a 400."""
    endpoint = create(client, keys)
    path = f"{URL}/{endpoint['id']}/rotate-secret"
    rotated = client.post(path, headers=keys.auth())
    assert rotated.status_code == 200, rotated.text
    data = rotated.json()["data"]
    assert data["secret"].startswith("whsec_") and data["secret"] != endpoint["secret"]
    expires = datetime.fromisoformat(data["previous_secret_expires_at"].replace("Z", "+00:00"))
    assert abs(expires - (utcnow() + timedelta(hours=24))) < timedelta(minutes=1)
    short = client.post(path, headers=keys.auth(), json={"overlap_seconds": 60}).json()["data"]
    expires = datetime.fromisoformat(short["previous_secret_expires_at"].replace("Z", "+00:00"))
    assert abs(expires - (utcnow() + timedelta(seconds=60))) < timedelta(seconds=10)
    none = client.post(path, headers=keys.auth(), json={"overlap_seconds": 0}).json()["data"]
    assert none["previous_secret_expires_at"] is None
    for bad in ({"overlap_seconds": -1}, {"overlap_seconds": "1"}, {"other": 1}):
        error_of(client.post(path, headers=keys.auth(), json=bad), 400, "invalid_request")


def test_delete_then_404(client: TestClient, keys: Keys) -> None:
    """DELETE answers 204 once, then the endpoint is gone."""
    endpoint = create(client, keys)
    path = f"{URL}/{endpoint['id']}"
    response = client.delete(path, headers=keys.auth())
    assert response.status_code == 204 and response.content == b""
    error_of(client.delete(path, headers=keys.auth()), 404, "not_found")


def test_delivery_log_replay_and_disabled_endpoints(
    client: TestClient, keys: Keys, local_settings: Settings
) -> None:
    """The log lists the job's delivery with its event type and attempts; a replay answers 202
    pending (Prefect being down only delays it); a disabled endpoint refuses replays (409)
    until it is enabled again."""
    endpoint = create(client, keys)
    job_id = running_job(local_settings.resolved_database_url, keys.workspace_id)
    finish_job(local_settings.resolved_database_url, job_id, error_code="job_crashed")
    [delivery] = client.get(f"{URL}/{endpoint['id']}/deliveries", headers=keys.auth()).json()[
        "data"
    ]
    assert delivery["event_type"] == "email.sync.failed" and delivery["status"] == "pending"
    assert delivery["event_id"].startswith("msg_") and delivery["attempt_log"] == []
    replay = client.post(f"{URL}/deliveries/{delivery['id']}/replay", headers=keys.auth())
    assert replay.status_code == 202 and replay.json()["data"]["status"] == "pending"
    with session_scope(local_settings.resolved_database_url) as session:
        row = session.get(WebhookEndpoint, endpoint["id"])
        assert row is not None
        row.status = "disabled"
    response = client.post(f"{URL}/deliveries/{delivery['id']}/replay", headers=keys.auth())
    error_of(response, 409, "endpoint_disabled")
    enabled = client.post(f"{URL}/{endpoint['id']}/enable", headers=keys.auth())
    assert enabled.json()["data"]["status"] == "active"


# --- on the real Prefect stack ------------------------------------------------------------


@contextmanager
def _runs_allow_loopback(prefect_stack: PrefectStack, *names: str) -> Iterator[None]:
    """Runs of these deployments may call 127.0.0.1 and retry deliveries after 0.5 s."""
    env = {"MAILSYNC_WEBHOOK_ALLOW_LOOPBACK": "true", "MAILSYNC_WEBHOOK_RETRY_BASE_SECONDS": "0.5"}
    with prefect_stack.client() as prefect:
        ids = [prefect.read_deployment_by_name(name).id for name in names]
        for deployment_id in ids:
            prefect.update_deployment(deployment_id, DeploymentUpdate(job_variables={"env": env}))
        try:
            yield
        finally:
            for deployment_id in ids:
                prefect.update_deployment(deployment_id, DeploymentUpdate(job_variables={}))


@pytest.fixture
def deliver_runs_allow_loopback(prefect_stack: PrefectStack) -> Iterator[None]:
    """Delivery runs, and sync runs (which make a job's first attempt), on the stack's
    worker may call 127.0.0.1 and retry after 0.5 s."""
    with _runs_allow_loopback(prefect_stack, "sync-mailbox/sync", DELIVER_DEPLOYMENT):
        yield


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as state:
        yield state


@pytest.fixture
def stack_client(prefect_stack: PrefectStack) -> Iterator[TestClient]:
    settings = prefect_stack.settings.model_copy(update={"webhook_allow_loopback": True})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def wait_for_job(client: TestClient, auth: dict[str, str], job_id: str) -> dict[str, Any]:
    def view() -> dict[str, Any]:
        data: dict[str, Any] = client.get(f"/v1/email/sync/{job_id}", headers=auth).json()["data"]
        return data

    return eventually(view, f"job {job_id} to end", 90, 0.25, until=job_ended)


@pytest.mark.integration
def test_the_deliver_deployment_has_its_safety_net_schedule_and_one_run_at_a_time(
    prefect_stack: PrefectStack,
) -> None:
    """prefect.yaml's deliver deployment is registered with the 60 s schedule (inactive on a
    test stack, as every schedule) and a concurrency limit of 1."""
    with prefect_stack.client() as prefect:
        deployment = prefect.read_deployment_by_name(DELIVER_DEPLOYMENT)
    [schedule] = deployment.schedules
    assert schedule.schedule.interval == timedelta(seconds=60)  # type: ignore[union-attr]
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1


@pytest.mark.integration
@pytest.mark.only_database("sqlite")  # a ~20 s sync; the outbox is tested on both databases
def test_api_triggered_sync_sends_a_verified_email_sync_completed(
    stack_client: TestClient,
    prefect_stack: PrefectStack,
    fakes: FakeProviders,
    receiver: Receiver,
    deliver_runs_allow_loopback: None,
) -> None:
    """A sync started through the API ends, and its email.sync.completed event reaches the
    receiver once, signed (verified with the README helper), carrying the job with counts,
    duration and cursor_reset; the delivery log shows the one 200 attempt."""
    tenant = make_tenant(prefect_stack.settings, fakes)
    hooks = {"Authorization": f"Bearer {tenant.no_scope}"}  # write:webhooks
    created = stack_client.post(URL, headers=hooks, json={"url": receiver.url})
    assert created.status_code == 201, created.text
    endpoint = created.json()["data"]
    receiver.secret = endpoint["secret"]
    response = stack_client.post("/v1/email/sync", headers=tenant.auth(), json={})
    assert response.status_code == 202, response.text
    job_id = response.json()["data"]["job_id"]
    job = wait_for_job(stack_client, tenant.auth(), job_id)
    assert job["status"] == "completed"

    [received] = receiver.wait_for(1, timeout=60)
    assert all(r.verified for r in receiver.requests)
    assert received.body is not None and received.body["type"] == "email.sync.completed"
    data = received.body["data"]
    assert data["job_id"] == job_id and data["status"] == "completed"
    assert data["counts"] == job["counts"] and data["cursor_reset"] is False
    assert isinstance(data["duration_seconds"], float | int) and data["duration_seconds"] >= 0
    # The receiver has answered; the delivery is recorded just after, by the sending task.
    deliveries = f"{URL}/{endpoint['id']}/deliveries"
    [delivery] = eventually(
        lambda: stack_client.get(deliveries, headers=hooks).json()["data"],
        "the delivery recorded",
        30,
        until=lambda found: found[0]["status"] != "pending",
    )
    assert delivery["event_id"] == received.webhook_id and delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempt_log"]] == [200]
    assert delivery["attempt_log"][0]["latency_ms"] >= 0


@pytest.mark.integration
@pytest.mark.only_database("sqlite")
def test_a_jobs_event_is_sent_by_the_run_that_ended_it(
    stack_client: TestClient,
    prefect_stack: PrefectStack,
    fakes: FakeProviders,
    receiver: Receiver,
) -> None:
    """The first attempt at a job's email.sync.completed is made by the job's own sync run,
    right after the job's end: the receiver gets it once and no delivery run is started for
    the job (a second flow run would come first, ~1.5 s on the warm worker)."""
    tenant = make_tenant(prefect_stack.settings, fakes, providers=("gmail",))
    hooks = {"Authorization": f"Bearer {tenant.no_scope}"}
    created = stack_client.post(URL, headers=hooks, json={"url": receiver.url})
    assert created.status_code == 201, created.text
    receiver.secret = created.json()["data"]["secret"]
    with _runs_allow_loopback(prefect_stack, "sync-mailbox/sync", DELIVER_DEPLOYMENT):
        response = stack_client.post("/v1/email/sync", headers=tenant.auth(), json={})
        assert response.status_code == 202, response.text
        job_id = response.json()["data"]["job_id"]
        assert wait_for_job(stack_client, tenant.auth(), job_id)["status"] == "completed"
        [received] = receiver.wait_for(1, timeout=60)
        with prefect_stack.client() as prefect:
            kicked = prefect.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    idempotency_key=FlowRunFilterIdempotencyKey(
                        any_=[f"deliver-webhooks:after:{job_id}"]
                    )
                )
            )
    assert received.body is not None and received.body["data"]["job_id"] == job_id
    assert all(r.verified for r in receiver.requests) and len(receiver.accepted) == 1
    assert kicked == []


@pytest.mark.integration
def test_event_left_by_a_killed_process_reaches_a_flaky_receiver_once(
    stack_client: TestClient,
    prefect_stack: PrefectStack,
    receiver: Receiver,
    deliver_runs_allow_loopback: None,
) -> None:
    """The job's end is committed and the process dies before any delivery is started; the
    next run of the deliver deployment (as its schedule starts it) delivers the event to a
    receiver that answers 503 twice: delivered exactly once after three attempts, all under
    one webhook-id, each signature valid, and the log shows 503, 503, 200."""
    keys = make_keys(prefect_stack.settings)
    created = stack_client.post(URL, headers=keys.auth(), json={"url": receiver.url})
    endpoint = created.json()["data"]
    receiver.secret, receiver.fail_first = endpoint["secret"], 2
    url = prefect_stack.settings.resolved_database_url
    job_id = running_job(url, keys.workspace_id)
    finish_job(url, job_id)  # committed with its event; no delivery run is started

    with prefect_stack.client() as prefect:  # what the 60 s schedule does
        deployment = prefect.read_deployment_by_name(DELIVER_DEPLOYMENT)
        prefect.create_flow_run_from_deployment(deployment.id, parameters={})
    receiver.wait_for(1, timeout=60)
    time.sleep(1.0)  # a duplicate would arrive within twice the retry interval
    assert [r.answered for r in receiver.requests] == [503, 503, 200]
    assert all(r.verified for r in receiver.requests)
    assert len({r.webhook_id for r in receiver.requests}) == 1
    [delivery] = stack_client.get(f"{URL}/{endpoint['id']}/deliveries", headers=keys.auth()).json()[
        "data"
    ]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    assert [a["status_code"] for a in delivery["attempt_log"]] == [503, 503, 200]


def test_endpoints_per_workspace_are_capped(local_settings: Settings, keys: Keys) -> None:
    """A workspace registers at most `webhook_max_endpoints`: eight concurrent creations
    against a cap of 3 make exactly 3 endpoints, and the rest get a clear 400 (not a 500, and
    not a 4th endpoint that a count-then-insert race would let in)."""
    settings = local_settings.model_copy(update={"webhook_max_endpoints": 3})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        barrier = threading.Barrier(8)

        def post(_: int) -> httpx.Response:
            barrier.wait()
            return client.post(URL, headers=keys.auth(), json={"url": HOOK})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        assert sorted(a.status_code for a in answers) == [201] * 3 + [400] * 5
        refused = next(a for a in answers if a.status_code == 400)
        assert "at most 3 webhook endpoints" in error_of(refused, 400, "invalid_request")["message"]
        assert len(client.get(URL, headers=keys.auth()).json()["data"]) == 3
