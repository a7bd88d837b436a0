"""Guards the fake Graph's per-folder delta gates, the breakpoint tests put between two folders."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailsync.fakes.client import AdminError, MicrosoftAdmin
from mailsync.fakes.microsoft import create_app
from mailsync.fakes.server import serve_in_thread
from mailsync.fakes.tls import ensure_tls
from tests.support.waiting import eventually

APP_SCOPE = "https://graph.microsoft.com/.default"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpx.Client, MicrosoftAdmin]]:
    tls = ensure_tls(Path(tmp_path_factory.mktemp("microsoft-gates-tls")))
    with (
        serve_in_thread(create_app(seed_messages=6, seed=5), tls) as base,
        MicrosoftAdmin(base, tls.ca_path) as admin,
        httpx.Client(base_url=base, verify=str(tls.ca_path), trust_env=False, timeout=30) as http,
    ):
        yield http, admin


def test_a_held_folder_is_answered_after_release_with_what_changed_meanwhile(
    served: tuple[httpx.Client, MicrosoftAdmin],
) -> None:
    """A held folder's delta call waits at its gate (counted as waiting) while other folders
    are answered (counted as answered); once released it is answered with the mailbox as it
    is then, so a move made while it waited shows in it."""
    http, admin = served
    account = admin.create_mailbox(f"gate-{uuid.uuid4().hex[:8]}@contoso.com", messages=6)
    address, creds = account.address, account.credentials
    token = http.post(
        f"/{creds.tenant_id}/oauth2/v2.0/token",
        data={
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "grant_type": "client_credentials",
            "scope": APP_SCOPE,
        },
    ).json()["access_token"]

    def delta(folder: str) -> dict[str, Any]:
        response = http.get(
            f"/v1.0/users/{address}/mailFolders/{folder}/messages/delta",
            headers={"Authorization": f"Bearer {token}", "Prefer": 'IdType="ImmutableId"'},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    [moved] = admin.add_messages(address, 1, "inbox")
    admin.hold_delta(address, "sentitems")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(delta, "sentitems")
        eventually(lambda: admin.delta_gates(address)["sentitems"].waiting == 1, "a waiting call")
        assert moved in {i["id"] for i in delta("inbox")["value"]}
        gates = admin.delta_gates(address)
        assert gates["inbox"].answered == 1 and not gates["inbox"].held
        assert gates["sentitems"].held and gates["sentitems"].answered == 0
        assert not held.done()

        admin.update_message(address, moved, folder="sentitems")
        admin.release_delta(address, "sentitems")
        assert moved in {i["id"] for i in held.result(timeout=30)["value"]}
    gate = admin.delta_gates(address)["sentitems"]
    assert (gate.held, gate.waiting, gate.answered) == (False, 0, 1)


def test_gates_name_existing_folders_only(served: tuple[httpx.Client, MicrosoftAdmin]) -> None:
    """Holding a folder the mailbox does not have is refused (400), like every admin folder."""
    _, admin = served
    address = admin.create_mailbox(f"gate-{uuid.uuid4().hex[:8]}@contoso.com", messages=1).address
    with pytest.raises(AdminError) as refused:
        admin.hold_delta(address, "no-such-folder")
    assert refused.value.status == 400
