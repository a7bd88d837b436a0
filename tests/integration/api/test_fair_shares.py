"""Fair shares of the overload gates (issue 15 points 9 and 10), with real concurrent requests
on a real server: one client or one tenant cannot take every slot from the others.

The server and the slow Prefect are those of the overload drill (test_overload.py): 2 trigger
slots, 4 request slots, a 0.5 s wait; here with the default shares (half of each).
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from mailsync.api.app import create_app
from mailsync.api.overload import Gates
from tests.support.api import Tenant, make_tenant
from tests.support.overload import (
    GENERAL_CAP,
    SLOW_S,
    SYNC_CAP,
    URL,
    WAIT_S,
    ObservedOrchestrator,
    SlowProxy,
)
from tests.support.servers import serve_like_up
from tests.support.stack import FakeProviders, PrefectStack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@dataclass
class Fair:
    url: str
    host: str
    port: int
    loud: Tenant
    quiet: Tenant
    quiet_job: str
    gates: Gates
    proxy: SlowProxy


@pytest.fixture
def fair(prefect_stack: PrefectStack, fakes: FakeProviders) -> Iterator[Fair]:
    name = f"fair-drill-{secrets.token_hex(4)}"
    prefect = prefect_stack.client()
    prefect.__enter__()
    deployment_id = prefect.create_deployment(
        flow_id=prefect.create_flow_from_name(name), name="drill", enforce_parameter_schema=False
    )
    proxy = SlowProxy(int(prefect_stack.api_url.split(":")[-1].split("/")[0]), delay=0)
    settings = prefect_stack.settings.model_copy(
        update={
            "prefect_api_url": proxy.url,
            "sync_quota": 100,
            "max_in_flight": GENERAL_CAP,
            "max_in_flight_sync": SYNC_CAP,
            "overload_wait_seconds": WAIT_S,
            "request_quota_per_minute": 100_000,
            "address_quota_per_minute": 100_000,
        }
    )
    orchestrator = ObservedOrchestrator(proxy.url, settings, deployment=f"{name}/drill")
    loud = make_tenant(settings, fakes, providers=("gmail",))
    quiet = make_tenant(settings, fakes, providers=("gmail",))
    app = create_app(settings, orchestrator)
    try:
        with serve_like_up(app, settings) as (host, port):
            url = f"http://{host}:{port}"
            jobs = []
            for tenant in (loud, quiet):  # the quota limits exist, the deployment is known
                first = httpx.post(f"{url}{URL}", json={}, headers=tenant.auth(), timeout=30)
                assert first.status_code == 202, first.text
                jobs.append(first.json()["data"]["job_id"])
            yield Fair(url, host, port, loud, quiet, jobs[1], app.state.overload, proxy)
    finally:
        proxy.close()
        prefect.delete_deployment(deployment_id)
        prefect.__exit__(None, None, None)


def test_one_tenants_burst_of_triggers_leaves_a_slot_to_another(fair: Fair) -> None:
    """Eight concurrent triggers of one tenant against 2 trigger slots, Prefect slow: that
    tenant never holds more than its share (1), and another tenant's trigger sent in the
    middle of the burst is accepted, not queued behind it and shed (without shares it waited
    behind the burst and got 503)."""
    fair.proxy.delay = SLOW_S
    barrier = threading.Barrier(9)
    loud: list[int] = []

    def trigger() -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            loud.append(
                client.post(f"{fair.url}{URL}", json={}, headers=fair.loud.auth()).status_code
            )

    threads = [threading.Thread(target=trigger) for _ in range(8)]
    for thread in threads:
        thread.start()
    barrier.wait()
    # The loud tenant's slot is taken and the rest of its burst waits.
    eventually(lambda: fair.gates.sync.waiting >= 4, "the burst waiting at the gate", 10, 0.01)
    quiet = httpx.post(f"{fair.url}{URL}", json={}, headers=fair.quiet.auth(), timeout=60)
    for thread in threads:
        thread.join(timeout=60)
    fair.proxy.delay = 0
    assert len(loud) == 8
    assert quiet.status_code == 202, (quiet.status_code, quiet.text, sorted(loud))
    assert 503 in loud, sorted(loud)  # the burst itself was still shed past its share


def _slow_body(host: str, port: int, tenant: Tenant) -> socket.socket:
    """A request from 127.0.0.2 whose head announces 100 bytes of body that never come."""
    sock = socket.create_connection((host, port), timeout=10, source_address=("127.0.0.2", 0))
    head = (
        f"POST /v1/webhooks HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: {tenant.auth()['Authorization']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def test_one_address_trickling_bodies_leaves_slots_to_other_clients(fair: Fair) -> None:
    """Four requests from one address that never send their bodies, against 4 request
    slots: they hold at most that address's share (2), and a client at another address is
    served at once (without shares the four held every slot until their 408s, and the other
    client's requests were shed)."""
    gate = fair.gates.general
    before = gate.admitted + gate.shed
    held = [_slow_body(fair.host, fair.port, fair.loud) for _ in range(GENERAL_CAP)]
    try:
        eventually(
            lambda: gate.admitted + gate.shed + gate.waiting - before >= GENERAL_CAP,
            "the slow requests at the gate",
            10,
            0.01,
        )
        # The address's share; its other two wait, then are shed. (Other slots may be held
        # meanwhile: the fixture's own requests can still be finishing.)
        assert gate.held_by("addr:127.0.0.2") == 2
        with httpx.Client(timeout=30, headers=fair.quiet.auth()) as client:
            job = f"{fair.url}{URL}/{fair.quiet_job}"
            answers = [client.get(job).status_code for _ in range(3)]
        assert answers == [200, 200, 200]
    finally:
        for sock in held:
            sock.close()
