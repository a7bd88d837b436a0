"""The local Prefect server (mailsync/orchestration/prefect_server.py): SQLite writers queue."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest
from prefect.server.database.configurations import AioSqliteConfiguration
from prefect.server.database.dependencies import MODELS_DEPENDENCIES, provide_database_interface
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

from mailsync.orchestration import prefect_server
from tests.support.stack import PrefectStack

ROUNDS = 60


async def take_and_release(api_url: str, auth: httpx.Auth, name: str) -> list[int]:
    """ROUNDS concurrent increment-with-lease + decrement-with-lease calls on one limit, as
    raw HTTP (no client retry hides a 503); every status code answered."""
    async with httpx.AsyncClient(base_url=api_url, auth=auth, timeout=60) as http:

        async def one() -> list[int]:
            body = {"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": 60}
            taken = await http.post("/v2/concurrency_limits/increment-with-lease", json=body)
            if taken.status_code != 200:
                return [taken.status_code]
            lease = {"lease_id": taken.json()["lease_id"]}
            given = await http.post("/v2/concurrency_limits/decrement-with-lease", json=lease)
            return [taken.status_code, given.status_code]

        answers = await asyncio.gather(*(one() for _ in range(ROUNDS)))
    return [code for codes in answers for code in codes]


@pytest.mark.integration
@pytest.mark.only_database("sqlite")  # the Prefect server's database, the same for both
def test_concurrent_read_then_write_calls_queue_instead_of_answering_503(
    prefect_stack: PrefectStack,
) -> None:
    """Concurrent calls that read then write (a concurrency-limit increment reads the limit,
    then updates it) all succeed at once: no 503 for a client to retry ~2 s later. Stock
    `prefect server start` on SQLite answers some of them 503 (SQLITE_BUSY_SNAPSHOT of a
    DEFERRED transaction), which cost most local incremental jobs a 2 s stall."""
    name = f"test-queue-{secrets.token_hex(4)}"
    api_url = prefect_stack.api_url
    auth = httpx.BasicAuth(*prefect_stack.auth_string.split(":", 1))
    created = httpx.post(
        f"{api_url}/v2/concurrency_limits/", json={"name": name, "limit": 10 * ROUNDS}, auth=auth
    )
    assert created.status_code == 201, created.text
    try:
        codes = asyncio.run(take_and_release(api_url, auth, name))
        assert sorted(set(codes)) == [200, 204], codes
        left = httpx.get(f"{api_url}/v2/concurrency_limits/{name}", auth=auth).json()
        assert left["active_slots"] == 0
    finally:
        httpx.delete(f"{api_url}/v2/concurrency_limits/{name}", auth=auth)


def test_install_applies_to_sqlite_only() -> None:
    """The queued-writers configuration replaces Prefect's for a SQLite database, and is left
    out for PostgreSQL (whose transactions already wait on row locks)."""
    saved = MODELS_DEPENDENCIES["database_config"]
    try:
        MODELS_DEPENDENCIES["database_config"] = None
        url = "postgresql+asyncpg://u@127.0.0.1/db"
        with temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: url}):
            assert prefect_server.install() is False
        with temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: "sqlite+aiosqlite:///x.db"}):
            assert prefect_server.install() is True
            config = provide_database_interface().database_config
        assert isinstance(config, prefect_server.QueuedWritersSqliteConfiguration)
        assert isinstance(config, AioSqliteConfiguration)
    finally:
        MODELS_DEPENDENCIES["database_config"] = saved
