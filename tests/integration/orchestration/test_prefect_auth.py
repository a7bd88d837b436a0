"""The Prefect API of a stack refuses callers without its auth string, the stack's processes
carry it in their environment only, and `mailsync up` keeps it like the encryption key."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import httpx
import pytest

from mailsync.devstack.up import UpOptions, up_spec
from mailsync.errors import ConfigurationError
from mailsync.settings import Settings
from tests.support.api import make_tenant, start_ui_run, wait_final
from tests.support.processes import descendants
from tests.support.stack import FakeProviders, PrefectStack

# Calls an intruder on port 4200 would make: read the runs, change mailsync's limits (the
# quota), register a deployment whose pull steps the workers would execute.
INTRUSIONS = [
    ("POST", "/flow_runs/filter", {}),
    ("POST", "/v2/concurrency_limits/filter", {}),
    ("PATCH", "/v2/concurrency_limits/mailsync-anything", {"limit": 1000}),
    ("POST", "/deployments/", {"name": "x", "flow_id": "00000000-0000-0000-0000-000000000000"}),
    ("POST", "/logs/filter", {}),
]


def listening_addresses(port: int) -> set[str]:
    """The IPv4/IPv6 addresses a TCP socket listens on at `port` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(words)))
    return found


@pytest.mark.integration
@pytest.mark.only_database("sqlite")  # the Prefect server is the same for both
def test_the_stack_prefect_api_refuses_calls_without_its_auth_string(
    prefect_stack: PrefectStack,
) -> None:
    """Every API call without the stack's auth string (none, or a wrong one) gets 401, so
    whoever reaches the port cannot read runs, change limits or register deployments; the
    stack's own client is served; health probes stay open; the UI is told to ask for it."""
    api = prefect_stack.api_url
    with httpx.Client(base_url=api, trust_env=False, timeout=30) as anonymous:
        for method, path, body in INTRUSIONS:
            answer = anonymous.request(method, path, json=body)
            assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
            wrong = anonymous.request(method, path, json=body, auth=("mailsync", "guess"))
            assert wrong.status_code == 401, (method, path, wrong.status_code)
        assert anonymous.get("/health").status_code == 200
        ui = anonymous.get(api.removesuffix("/api") + "/ui-settings")
        assert ui.status_code == 200 and ui.json()["auth"] == "BASIC"
    with prefect_stack.client() as client:
        assert client.read_work_pool("mailsync").name == "mailsync"
    # And only this machine can try: the server listens on loopback alone.
    port = int(api.rsplit(":", 1)[1].split("/", 1)[0])
    assert listening_addresses(port) == {"127.0.0.1"}


@pytest.mark.integration
@pytest.mark.only_database("sqlite")
def test_the_auth_string_reaches_the_stack_by_environment_only(
    prefect_stack: PrefectStack, fakes: FakeProviders
) -> None:
    """A flow run started on the authenticated API completes (the worker and the run's own
    process authenticate); the auth string is in no process's command line (server, worker,
    zygote, anything they started), in neither the run's parameters nor its job variables nor
    the deployment, in no log of the stack; the children do carry it in their environment."""
    secret = prefect_stack.auth_string
    tenant = make_tenant(prefect_stack.settings, fakes, providers=("gmail",))
    with prefect_stack.client() as prefect:
        run = wait_final(prefect, start_ui_run(prefect, tenant.workspace_id, ["gmail"], "full"))
        assert run.deployment_id is not None
        deployment = prefect.read_deployment(run.deployment_id)
        pool = prefect.read_work_pool(deployment.work_pool_name or "mailsync")
    assert run.state is not None and run.state.is_completed(), run.state
    recorded = [run.parameters, run.job_variables, deployment.model_dump(mode="json"),
                pool.base_job_template]  # fmt: skip
    assert secret not in json.dumps(recorded, default=str)

    pids = descendants(*(c.process.pid for c in prefect_stack.stack.children))
    assert len(pids) > len(prefect_stack.stack.children)  # the zygote, at least
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        assert secret.encode() not in cmdline, cmdline
    for child in prefect_stack.stack.children:
        environ = Path(f"/proc/{child.process.pid}/environ").read_bytes().split(b"\0")
        assert f"PREFECT_API_AUTH_STRING={secret}".encode() in environ, child.name
    for log in prefect_stack.stack.log_dir.glob("*.log"):
        assert secret not in log.read_text(errors="replace"), log.name


def test_the_local_server_auth_string_is_generated_once_kept_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mailsync up`'s own Prefect server gets an auth string generated into the data dir
    (mode 0600), the same one on every later start; an emptied file is an error, never a
    reason to make a new one (the UI and CLI logins would silently stop working)."""
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.delenv("MAILSYNC_PREFECT_AUTH_STRING", raising=False)
    settings = Settings(data_dir=tmp_path / "data", prefect_api_url=None)
    first = up_spec(settings, UpOptions()).prefect_auth_string
    path = tmp_path / "data" / "prefect-auth-string"
    assert first and path.read_text().strip() == first and ":" in first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Settings(data_dir=tmp_path / "data", prefect_api_url=None)
    assert up_spec(again, UpOptions()).prefect_auth_string == first
    # The CLI beside that stack (`mailsync sync`, `jobs`) sends it too.
    assert again.prefect_client_auth_string() == first
    path.write_text("")
    with pytest.raises(ConfigurationError):
        again.prefect_server_auth_string()
    assert path.read_text() == ""


def test_a_configured_auth_string_is_used_and_no_file_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAILSYNC_PREFECT_AUTH_STRING sets the local server's auth string; pointed at an
    existing Prefect (PREFECT_API_URL), `up`'s clients send the configured one
    (MAILSYNC_PREFECT_AUTH_STRING, else PREFECT_API_AUTH_STRING), and generate none."""
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.setenv("MAILSYNC_PREFECT_AUTH_STRING", "ops:configured")
    local = Settings(data_dir=tmp_path, prefect_api_url=None)
    assert up_spec(local, UpOptions()).prefect_auth_string == "ops:configured"
    assert "ops:configured" not in repr(local) and "ops:configured" not in repr(
        up_spec(local, UpOptions())
    )
    monkeypatch.delenv("MAILSYNC_PREFECT_AUTH_STRING")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "ops:prefects")
    external = Settings(data_dir=tmp_path, prefect_api_url="http://prefect-host:4200/api")
    assert up_spec(external, UpOptions()).prefect_auth_string == "ops:prefects"
    monkeypatch.delenv("PREFECT_API_AUTH_STRING")
    assert up_spec(external, UpOptions()).prefect_auth_string is None
    assert not (tmp_path / "prefect-auth-string").exists()
