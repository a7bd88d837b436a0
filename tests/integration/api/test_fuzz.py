"""Schemathesis against the served OpenAPI document: every operation, valid and invalid
inputs, with a valid key, without a key and with an unknown key.

CI size: `FUZZ_EXAMPLES` (default 3) examples per operation and generation mode (negative
only where an operation has a body or a query to get wrong), a fixed seed (`derandomize`), no
example database; each case is sent with the valid key and, alternately, with no key or an
unknown one (84 requests, ~10 s). RELIABILITY.md has the longer run.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mailsync.api.app import create_app
from mailsync.core import apikeys, workspaces
from mailsync.db import session_scope
from mailsync.webhooks import ssrf
from tests.support.stack import PrefectStack

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "3"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
RATE_LIMIT_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


class OwnAddress:
    """The app seen from a client address of its own, so this run's unauthenticated requests
    meet a fresh per-address quota rather than what other tests of the session spent."""

    def __init__(self, app: Any, address: str) -> None:
        self.app, self.address = app, address

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "client": (self.address, 40000)}
        await self.app(scope, receive, send)


@pytest.fixture
def fuzz_target(
    prefect_stack: PrefectStack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, str]]:
    """The real app on the real Prefect (quotas, health), a workspace with no mailbox (so a
    sync request ends in 403 and starts no flow run), a key with every scope, quotas out of
    reach of the run's size, and DNS answered with a public address (webhook URLs pass the
    SSRF guard without a network)."""
    monkeypatch.setattr(ssrf, "system_resolver", lambda host, port: ["93.184.215.14"])
    settings = prefect_stack.settings.model_copy(
        update={"request_quota_per_minute": 100_000, "address_quota_per_minute": 100_000}
    )
    workspace_id = f"ws-fuzz-{secrets.token_hex(4)}"
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, workspace_id)
        _, key = apikeys.create_api_key(session, workspace_id, sorted(apikeys.SCOPES))
    app = create_app(settings)
    yield OwnAddress(app, f"fuzz-{secrets.token_hex(4)}"), key


@pytest.mark.integration
@pytest.mark.only_database("sqlite")
def test_fuzz_every_operation(fuzz_target: tuple[Any, str]) -> None:
    """For generated valid and invalid requests to every documented operation, with a valid,
    no or an unknown key: never a 5xx; every status code, content type, body and header is
    the documented one; every response carries X-Request-ID, and every /v1 response the
    X-RateLimit-* headers."""
    app, key = fuzz_target
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    valid = {"Authorization": f"Bearer {key}"}
    anonymous = itertools.cycle([{}, {"Authorization": "Bearer wbk_" + "0" * 40}])
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if len(operation.body) or len(operation.query):  # anything can be invalid at all
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                for auth in (valid, next(anonymous)):
                    response = case.call(headers=auth)
                    statuses[response.status_code] += 1
                    case.validate_response(response, checks=CHECKS, headers=auth)
                    assert response.headers.get("x-request-id"), case.path
                    if case.path.startswith("/v1/"):
                        missing = [h for h in RATE_LIMIT_HEADERS if h not in response.headers]
                        assert not missing, (case.method, case.path, response.status_code)

            run()
    print(f"\nfuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert not [s for s in statuses if s >= 500]
