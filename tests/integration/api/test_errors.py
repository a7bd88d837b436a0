"""Every documented error: status, code, envelope, X-Request-ID; no input produces a 500."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from mailsync.db import get_engine
from mailsync.db.tables import SyncJob
from mailsync.settings import Settings
from tests.support.api import Tenant, make_tenant
from tests.support.stack import FakeProviders

URL = "/v1/email/sync"


def assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "wbk_" + "a" * 40},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer wbk_" + "a" * 40},
    ],
)
def test_401_invalid_key(offline_client: TestClient, headers: dict[str, str]) -> None:
    """Missing, malformed or unknown keys get 401 invalid_key with a Bearer challenge."""
    response = offline_client.post(URL, headers=headers, json={})
    assert_error(response, 401, "invalid_key")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_error(offline_client.get(f"{URL}/sync_x", headers=headers), 401, "invalid_key")


def test_403_without_write_scope(offline_client: TestClient, tenant: Tenant) -> None:
    """A key without write:email cannot trigger; one without any email scope cannot read."""
    assert_error(
        offline_client.post(URL, headers=tenant.auth(tenant.reader), json={}),
        403,
        "insufficient_permissions",
    )
    assert_error(
        offline_client.get(f"{URL}/sync_x", headers=tenant.auth(tenant.no_scope)),
        403,
        "insufficient_permissions",
    )


def test_403_without_connected_mailbox(
    offline_client: TestClient, settings: Settings, fakes: FakeProviders
) -> None:
    """No connected mailbox at all, or none for the provider asked: 403."""
    only_gmail = make_tenant(settings, fakes, providers=("gmail",))
    nothing = make_tenant(settings, fakes, providers=())
    error = assert_error(
        offline_client.post(URL, headers=only_gmail.auth(), json={"provider": "microsoft"}),
        403,
        "insufficient_permissions",
    )
    assert "microsoft" in error["message"]
    assert_error(
        offline_client.post(URL, headers=nothing.auth(), json={}), 403, "insufficient_permissions"
    )


@pytest.mark.parametrize(
    ("body", "content_type", "param"),
    [
        ('{"mode": "fast"}', "application/json", "mode"),
        ('{"mode": 1}', "application/json", "mode"),
        ('{"mode": null}', "application/json", "mode"),
        ('{"provider": "yahoo"}', "application/json", "provider"),
        ('{"provider": ["gmail"]}', "application/json", "provider"),
        ('{"extra": true}', "application/json", "extra"),
        ('{"mode": "full",}', "application/json", None),
        ("[]", "application/json", None),
        ('"full"', "application/json", None),
        ("mode=full", "application/x-www-form-urlencoded", None),
        ("\xff\xfe", "application/json", None),
        ('{"mode": "incremental"}', "text/plain", None),
        # Nested past the JSON decoder's recursion limit, then within it.
        pytest.param("[" * 50_000, "application/json", None, id="nested-50000"),
        pytest.param(
            '{"mode": ' + "[" * 5_000 + "]" * 5_000 + "}", "application/json", None, id="nested-5k"
        ),
        pytest.param(
            '{"mode": ' + "[" * 500 + "]" * 500 + "}", "application/json", "mode", id="nested-500"
        ),
    ],
)
def test_400_invalid_request(
    offline_client: TestClient, tenant: Tenant, body: str, content_type: str, param: str | None
) -> None:
    """Wrong values, unknown fields, malformed, non-JSON or deeply nested bodies: 400 naming
    the field (a body nested past the JSON decoder's recursion limit was a 500)."""
    response = offline_client.post(
        URL,
        headers={**tenant.auth(), "Content-Type": content_type},
        content=body.encode("latin-1"),
    )
    error = assert_error(response, 400, "invalid_request")
    if param:
        assert error["param"] == param and param in error["message"]


def test_413_huge_body(offline_client: TestClient, tenant: Tenant) -> None:
    """Bodies over the limit are refused before they are read, with the same envelope."""
    body = json.dumps({"mode": "full", "pad": "x" * 200_000})
    response = offline_client.post(
        URL, headers={**tenant.auth(), "Content-Type": "application/json"}, content=body
    )
    assert_error(response, 413, "payload_too_large")


def test_404s_and_405(offline_client: TestClient, tenant: Tenant) -> None:
    """Unknown jobs, unknown routes and wrong methods keep the envelope."""
    assert_error(offline_client.get(f"{URL}/sync_nope", headers=tenant.auth()), 404, "not_found")
    assert_error(offline_client.get(f"{URL}/{'x' * 5000}", headers=tenant.auth()), 404, "not_found")
    assert_error(offline_client.get("/v1/nothing", headers=tenant.auth()), 404, "not_found")
    assert_error(offline_client.delete(URL, headers=tenant.auth()), 405, "method_not_allowed")


def test_503_when_prefect_is_down_creates_no_job(
    offline_client: TestClient, tenant: Tenant, settings: Settings
) -> None:
    """Without Prefect the sync rules cannot be checked: the client gets 503 with
    Retry-After, and no job is left behind half-created."""
    response = offline_client.post(URL, headers=tenant.auth(), json={})
    assert_error(response, 503, "service_unavailable")
    assert response.headers["retry-after"]
    with Session(get_engine(settings.resolved_database_url)) as session:
        jobs = session.exec(select(SyncJob).where(SyncJob.workspace_id == tenant.workspace_id))
        assert list(jobs) == []


@pytest.mark.parametrize(
    ("supplied", "echoed"),
    [("abc-123", True), ("a" * 200, False), ("bad id\x7f", False), ("", False)],
)
def test_request_id_echo_or_generate(
    offline_client: TestClient, supplied: str, echoed: bool
) -> None:
    """A sane X-Request-ID is echoed; anything else is replaced by a generated one."""
    response = offline_client.get("/v1/email/sync/x", headers={"X-Request-ID": supplied})
    rid = response.headers["x-request-id"]
    assert (rid == supplied) is echoed
    if not echoed:
        assert rid.startswith("req_")


def test_openapi_and_docs_are_served(offline_client: TestClient) -> None:
    """The OpenAPI document describes both operations; /docs renders."""
    spec = offline_client.get("/openapi.json").json()
    assert {"/v1/email/sync", "/v1/email/sync/{job_id}"} <= set(spec["paths"])
    assert "202" in spec["paths"]["/v1/email/sync"]["post"]["responses"]
    assert offline_client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer \xff\xfe\xfd")],
        [(b"authorization", b"Bearer wbk_" + b"A" * 5000)],
        [(b"authorization", b"bearer")],
        [(b"x-request-id", "ünïcode".encode())],
        [(b"content-type", b"application/json; charset=utf-16")],
        [(b"content-type", b"\x00\x01")],
        [(b"content-length", b"-1")],
        [(b"content-length", b"abc")],
        [(b"accept", b"text/html")],
    ],
)
def test_odd_headers_never_cause_a_5xx(
    offline_client: TestClient, tenant: Tenant, headers: list[tuple[bytes, bytes]]
) -> None:
    """Malformed or hostile header values get a 4xx with the envelope, never a 5xx."""
    names = {name for name, _ in headers}
    base = (
        []
        if b"authorization" in names
        else [(b"authorization", tenant.auth()["Authorization"].encode())]
    )
    raw = [*base, *headers]
    status, body = asyncio.run(send_raw(offline_client.app, raw, b'{"mode": "sideways"}'))
    assert 400 <= status < 500, body
    assert json.loads(body)["error"]["code"]


async def send_raw(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    """Call the ASGI app with header bytes exactly as given (no client-side normalisation)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": URL, "raw_path": URL.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def capture(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, capture)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_authentication_is_checked_before_the_body(offline_client: TestClient) -> None:
    """An unauthenticated request learns nothing about body validation: 401 comes first."""
    response = offline_client.post(URL, content=b"{not json", headers={"Content-Type": "x/y"})
    assert_error(response, 401, "invalid_key")


def test_unexpected_errors_keep_the_envelope_and_headers(
    offline_client: TestClient, tenant: Tenant
) -> None:
    """A bug surfaces as a 500 with the error envelope, X-Request-ID and the rate-limit
    headers, and says nothing about its cause."""
    from mailsync.api.deps import get_session

    def broken() -> None:
        raise RuntimeError("database password is hunter2")

    app: Any = offline_client.app
    app.dependency_overrides[get_session] = broken
    try:
        response = offline_client.get(f"{URL}/sync_x", headers=tenant.auth())
    finally:
        app.dependency_overrides.clear()
    error = assert_error(response, 500, "internal_error")
    assert "hunter2" not in response.text and error["request_id"].startswith("req_")
    assert "x-ratelimit-limit" in response.headers


def test_openapi_documents_400_where_fastapi_would_say_422(offline_client: TestClient) -> None:
    """A request that fails validation is answered 400 invalid_request (errors.py), so the
    OpenAPI document never promises FastAPI's 422 validation body: every operation with a
    parameter or a body documents 400 with the error envelope."""
    document = offline_client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(document)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not operation.get("parameters") and "requestBody" not in operation:
                continue
            documented = operation["responses"].get("400")
            assert documented is not None, (method, path)
            schema = documented["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path)
