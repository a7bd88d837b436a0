"""`mailsync up --demo`, as a newcomer runs it: the spec's curl example works against it; and
the one stack assembler (mailsync/devstack/stack.py) that `up`, the tests and bench/ share."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from uvicorn.main import main as uvicorn_main

from mailsync.devstack.api_server import api_command, api_server_options
from mailsync.devstack.fakes import Fakes
from mailsync.devstack.stack import ApiSpec, FakesProcess, StackSpec
from mailsync.devstack.up import UpOptions, up_spec
from mailsync.fakes.server import free_port
from mailsync.settings import Settings
from tests.support.processes import descendants, read_until, stop_up
from tests.support.waiting import eventually, job_ended

DEVSTACK = Path(__file__).resolve().parents[2] / "mailsync" / "devstack"


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_demo_stack_serves_the_spec_curl_example(tmp_path: Path) -> None:
    """One command brings up Prefect, a worker, the fakes and the API; the demo mailboxes are
    synced and their push channels open; the spec's curl example returns 202 and the job
    completes, visible in Prefect
    under its id to a caller with the auth string `up` generated (0600, in the data dir) and
    to no other (401); that string is in no command line, output or log; Ctrl-C stops every
    child process, even when started with SIGINT ignored."""
    api_port, prefect_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MAILSYNC_", "PREFECT_"))},
        "MAILSYNC_DATA_DIR": str(tmp_path / "data"),
        "MAILSYNC_PREFECT_PORT": str(prefect_port),
        "COLUMNS": "200",
    }
    # Started with SIGINT ignored, as a script's background job is (POSIX shells without job
    # control): Ctrl-C must stop it all the same.
    up = [sys.executable, "-m", "mailsync.cli", "up", "--demo", "--port", str(api_port),
          "--seed-messages", "150"]  # fmt: skip
    process = subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *up],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = read_until(process, "Ctrl-C stops everything", timeout=240)
        assert "completed" in output
        # Push is on: the demo mailboxes' Gmail watch and Graph subscription are open.
        assert "push: 2 channels opened, 0 failed" in output, output
        key = (tmp_path / "data" / "demo-api-key").read_text().strip()
        assert key.startswith("wbk_") and "curl -X POST" in output
        secret_file = tmp_path / "data" / "prefect-auth-string"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        prefect = httpx.BasicAuth(*secret.split(":", 1))
        assert secret not in output and str(secret_file) in output
        for pid in descendants(process.pid):
            with contextlib.suppress(OSError):
                assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        curl = subprocess.run(
            ["curl", "-sS", "-i", "-X", "POST", f"http://127.0.0.1:{api_port}/v1/email/sync",
             "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
             "-d", "{}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        head, _, body = curl.stdout.replace("\r\n", "\n").partition("\n\n")
        assert head.startswith("HTTP/1.1 202"), curl.stdout
        assert "x-request-id" in head.lower()
        data = json.loads(body)["data"]
        assert set(data) == {"job_id", "status", "mode", "queued_at"}

        view = eventually(
            lambda: httpx.get(
                f"http://127.0.0.1:{api_port}/v1/email/sync/{data['job_id']}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,  # a GET asks Prefect twice; on a loaded CI box that took > 5 s
            ).json()["data"],
            "the demo job to end",
            until=job_ended,
        )
        assert view["status"] == "completed", view
        assert [m["performed_mode"] for m in view["mailboxes"]] == ["incremental"] * 2
        # The printed consent URL connects a new fake mailbox, as a user's browser would.
        lines = output.splitlines()
        consent = next(
            lines[i + 2].strip() for i, line in enumerate(lines) if "consent URL" in line
        )
        trust = ssl.create_default_context(cafile=str(tmp_path / "data" / "fakes-tls" / "ca.pem"))
        landed = httpx.get(consent, verify=trust, trust_env=False, follow_redirects=True)
        assert landed.url.path == "/docs" and "mailbox_id" in landed.url.params, landed.url
        listed = httpx.get(f"http://127.0.0.1:{api_port}/v1/mailboxes",
                           headers={"Authorization": f"Bearer {key}"}).json()["data"]  # fmt: skip
        assert landed.url.params["mailbox_id"] in {
            m["id"] for m in listed if m["status"] == "active"
        }

        # The job is recorded as ended just before its run's last steps (summary artifact,
        # the COMPLETED state): the run may still be RUNNING for a moment.
        runs = eventually(
            lambda: httpx.post(
                f"http://127.0.0.1:{prefect_port}/api/flow_runs/filter",
                json={"flow_runs": {"name": {"any_": [data["job_id"]]}}},
                auth=prefect,
            ).json(),
            "the job's run past RUNNING",
            until=lambda found: [r["state_type"] for r in found] != ["RUNNING"],
        )
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
        ui = httpx.get(
            f"http://127.0.0.1:{prefect_port}/runs/flow-run/{runs[0]['id']}",
            headers={"Accept": "text/html"},
            follow_redirects=True,
        )
        assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]
        # The UI asks for the auth string (Prefect's BASIC login); the API refuses without.
        ui_settings = httpx.get(f"http://127.0.0.1:{prefect_port}/ui-settings").json()
        assert ui_settings["auth"] == "BASIC"
        anonymous = httpx.post(f"http://127.0.0.1:{prefect_port}/api/flow_runs/filter", json={})
        assert anonymous.status_code == 401
        logs = "".join(
            p.read_text(errors="replace") for p in (tmp_path / "data" / "logs").glob("*")
        )
        assert key not in logs and key not in json.dumps(runs)
        assert secret not in logs and secret not in json.dumps(runs)
    finally:
        returncode = stop_up(process)
    assert returncode == 0
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == []


@pytest.mark.parametrize("app", ["mailsync.api.app:create_app", "bench.bare_app:create_app"])
def test_an_api_process_is_served_with_the_api_server_options(app: str) -> None:
    """The uvicorn command of a stack's API process (`mailsync up`'s and bench/'s alike)
    means exactly `api_server_options`, the options the in-thread API of the tests gets."""
    settings = Settings(max_header_bytes=16 * 1024, api_keep_alive_seconds=7)
    command = api_command(settings, 8123, app)
    assert command[1:3] == ["-m", "uvicorn"]
    params = uvicorn_main.make_context("uvicorn", command[3:]).params
    assert {key: params[key] for key in api_server_options(settings)} == api_server_options(
        settings
    )
    assert (params["app"], params["factory"], params["port"]) == (app, True, 8123)
    assert params["host"] == settings.api_host and params["access_log"] is False


def test_a_child_gets_the_stack_settings_and_the_callers_env_last(tmp_path: Path) -> None:
    """Every child of a stack starts with the application's data dir and database, Prefect's
    settings (its home under the workdir, the stack's own server), the fakes' endpoints, and
    the caller's `env` over all of them."""
    fakes = Fakes("https://127.0.0.1:1", "https://127.0.0.1:2", tmp_path / "ca.pem")
    spec = StackSpec(
        workdir=tmp_path,
        data_dir=tmp_path / "data",
        database_url="sqlite:///x.db",
        prefect_port=4321,
        prefect_settings={"PREFECT_LOGGING_LEVEL": "WARNING"},
        fakes=fakes,
        env={"MAILSYNC_GMAIL_API_URL": "https://elsewhere/"},
        base_env={"PATH": "/bin", "MAILSYNC_DATABASE_URL": "sqlite:///other.db"},
    )
    env = spec.child_env(fakes)
    assert env["PATH"] == "/bin"
    assert env["MAILSYNC_DATA_DIR"] == str(tmp_path / "data")
    assert env["MAILSYNC_DATABASE_URL"] == "sqlite:///x.db"
    assert env["PREFECT_HOME"] == str(tmp_path / "prefect")
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"
    assert env["PREFECT_LOGGING_LEVEL"] == "WARNING"
    assert env["MAILSYNC_PROVIDER_CA_BUNDLE"] == str(tmp_path / "ca.pem")
    assert env["MAILSYNC_GMAIL_API_URL"] == "https://elsewhere/"


def test_up_runs_everything_under_its_data_dir_with_schedules_and_the_api(tmp_path: Path) -> None:
    """`mailsync up`'s stack: logs and Prefect home in the data dir, the deployments with
    their schedules, the settings' pool and worker limit, the API on --port, and the fakes
    as a child process only with --demo."""
    settings = Settings(data_dir=tmp_path, worker_limit=3, prefect_api_url=None)
    spec = up_spec(settings, UpOptions(port=8111, workers=2, worker_type="process"))
    assert spec.log_dir == tmp_path / "logs" and spec.prefect_home == tmp_path / "prefect"
    assert spec.deployments and spec.schedules
    assert (spec.work_pool, spec.workers, spec.worker_type, spec.worker_limit) == (
        settings.work_pool,
        2,
        "process",
        3,
    )
    assert spec.api == ApiSpec(settings, 8111) and spec.fakes is None
    demo = up_spec(settings, UpOptions(demo=True, seed_messages=150))
    assert demo.fakes == FakesProcess(150)


def test_devstack_never_imports_the_cli() -> None:
    """The CLI imports devstack, never the other way round: devstack neither imports the CLI
    nor runs it as a child (`-m mailsync.cli`); it is what `mailsync up`, the tests and bench/
    share, and the CLI is one of its callers."""
    offenders = []
    for path in DEVSTACK.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(n == "mailsync.cli" or n.startswith("mailsync.cli.") for n in names):
                offenders.append(path.name)
        assert "mailsync.cli" not in path.read_text(), path.name
    assert not offenders
