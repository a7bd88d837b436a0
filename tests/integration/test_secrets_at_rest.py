"""No secret is stored or written in plaintext: not in the application database (read raw),
not in Prefect's home (its database, results, logs), not in API output.

Secrets here: API keys (stored only as SHA-256 hashes), provider credentials (refresh tokens,
client secrets), the access tokens a sync obtains (the auth state kept between syncs) and
webhook signing secrets (`whsec_...`, current and previous after a rotation).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from mailsync.api.app import create_app
from mailsync.core import apikeys, workspaces
from mailsync.db import get_engine, session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.db.tables import Mailbox
from mailsync.settings import Settings
from tests.support.api import Tenant, make_tenant
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually, job_ended

SECRET_FIELDS = {"client_secret", "refresh_token", "access_token", "token", "secret", "private_key"}


def secret_values(document: Any, found: set[str]) -> set[str]:
    """Every string under a secret-looking key, looking inside JSON-encoded strings too."""
    if isinstance(document, str):
        try:
            inner = json.loads(document)
        except ValueError:
            return found
        return secret_values(inner, found) if isinstance(inner, dict | list) else found
    if isinstance(document, dict):
        for key, value in document.items():
            if key in SECRET_FIELDS and isinstance(value, str) and len(value) >= 12:
                found.add(value)
            else:
                secret_values(value, found)
    elif isinstance(document, list):
        for value in document:
            secret_values(value, found)
    return found


def database_text(url: str) -> bytes:
    """The application database as stored: the SQLite files' bytes, or, on PostgreSQL, every
    text and JSON column of every table (found by reflection), cast to text in SQL."""
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        files = [path, *(Path(f"{path}{s}") for s in ("-wal", "-journal"))]
        return b"".join(f.read_bytes() for f in files if f.exists())
    engine = get_engine(url)
    metadata = sa.MetaData()
    metadata.reflect(engine)
    chunks: list[str] = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            columns = [
                sa.cast(c, sa.Text)
                for c in table.columns
                if isinstance(c.type, sa.String | sa.JSON)
            ]
            for row in conn.execute(sa.select(*columns)) if columns else ():
                chunks.extend(str(v) for v in row if v is not None)
    assert chunks
    return "\n".join(chunks).encode()


def files_text(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.fixture
def client(prefect_stack: PrefectStack) -> Iterator[TestClient]:
    settings = prefect_stack.settings.model_copy(update={"webhook_allow_loopback": True})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def run_one_sync(client: TestClient, tenant: Tenant) -> dict[str, Any]:
    job = client.post("/v1/email/sync", headers=tenant.auth(), json={})
    assert job.status_code == 202, job.text
    url = f"/v1/email/sync/{job.json()['data']['job_id']}"
    response = eventually(
        lambda: client.get(url, headers=tenant.auth()),
        "the sync to end",
        90,
        0.25,
        until=lambda answer: job_ended(answer.json()["data"]),
    )
    return {"data": response.json()["data"], "text": response.text}


@pytest.mark.integration
def test_no_plaintext_secret_at_rest_or_in_output(
    client: TestClient, prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """After connecting mailboxes, creating API keys and a webhook endpoint (rotated once),
    and one sync through the real stack: no API key, refresh token, client secret, access
    token or whsec_ secret (nor its decoded key) appears in the raw application database,
    in Prefect's home (server database, results, logs) or in any API response after the one
    that shows a secret once. Positive controls: each key's SHA-256 hash and the endpoint's
    URL are found in the same bytes, so the scan reads real data."""
    settings: Settings = prefect_stack.settings
    tenant = make_tenant(settings, fakes)
    hook_key = tenant.auth(tenant.no_scope)  # write:webhooks
    created = client.post(
        "/v1/webhooks", headers=hook_key, json={"url": "http://127.0.0.1:9/secrets-test"}
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()["data"]
    rotated = client.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret", headers=hook_key)
    assert rotated.status_code == 200, rotated.text
    hook_secrets = [endpoint["secret"], rotated.json()["data"]["secret"]]
    job = run_one_sync(client, tenant)
    assert job["data"]["status"] == "completed", job["data"]

    box = CredentialBox(settings.fernet_key())
    provider_secrets: set[str] = set()
    with Session(get_engine(settings.resolved_database_url)) as session:
        query = select(Mailbox).where(Mailbox.workspace_id == tenant.workspace_id)
        mailboxes = list(session.exec(query))
    assert len(mailboxes) == 2 and all(m.auth_state_encrypted for m in mailboxes)
    for mailbox in mailboxes:
        secret_values(box.open(mailbox.credentials_encrypted), provider_secrets)
        assert mailbox.auth_state_encrypted is not None
        access = secret_values(box.open(mailbox.auth_state_encrypted), set())
        assert access, f"{mailbox.provider}: the sync kept no access token to look for"
        provider_secrets |= access
    api_keys = [tenant.writer, tenant.reader, tenant.no_scope]
    secrets = {
        *api_keys,
        *hook_secrets,
        *(base64.b64decode(s.removeprefix("whsec_")).hex() for s in hook_secrets),
        *provider_secrets,
    }
    assert len(provider_secrets) >= 5  # 2 client secrets, a refresh token, 2 access tokens

    home = Path(prefect_stack.stack.env["PREFECT_HOME"])
    places = {
        "application database": database_text(settings.resolved_database_url),
        "Prefect home": files_text(home) + files_text(prefect_stack.stack.log_dir),
        "API output": (job["text"] + client.get("/v1/webhooks", headers=hook_key).text).encode(),
    }
    for place, raw in places.items():
        for secret in secrets:
            assert secret.encode() not in raw, f"a plaintext secret in the {place}"
            for s in hook_secrets:
                assert base64.b64decode(s.removeprefix("whsec_")) not in raw, place
    stored = places["application database"]
    assert all(apikeys.hash_key(k).encode() in stored for k in api_keys)
    assert b"http://127.0.0.1:9/secrets-test" in stored
    assert job["data"]["job_id"].encode() in places["Prefect home"]  # its flow run's name


@pytest.mark.only_database("sqlite")
def test_api_keys_are_compared_by_hash_only(settings: Settings) -> None:
    """Constant time, by construction: `authenticate` hashes the presented key and finds the
    row by that SHA-256 hash in SQL (then confirms it with hmac.compare_digest). The plaintext
    never reaches the database, and a hash-index lookup is no timing oracle on the key,
    because an attacker controls the key, not its hash. Checked on the SQL actually sent."""
    with session_scope(settings.resolved_database_url) as session:
        workspace = f"ws-hash-{time.monotonic_ns()}"
        workspaces.create_workspace(session, workspace)
        _, plaintext = apikeys.create_api_key(session, workspace, ["read:email"])
    engine = get_engine(settings.resolved_database_url)
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        sent.append(f"{statement} {params!r}")

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as session:
            assert apikeys.authenticate(session, plaintext) is not None
            # Another last character, always: a fixed "0" was the key itself one time in 62.
            tampered = plaintext[:-1] + ("1" if plaintext.endswith("0") else "0")
            assert apikeys.authenticate(session, tampered) is None
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert sent and not any(plaintext in s or plaintext[:-1] in s for s in sent)
    assert any(apikeys.hash_key(plaintext) in s for s in sent)
