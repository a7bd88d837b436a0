"""`mailsync up --demo`, as a newcomer runs it: the spec's curl example works against it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mailsync.fakes.server import free_port
from tests.support.processes import stop_up

pytestmark = pytest.mark.integration


def _read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            seen.append(line)
            if marker in line:
                return "".join(seen)
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.1)
    raise AssertionError(f"{marker!r} not seen; output so far:\n{''.join(seen)}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_demo_stack_serves_the_spec_curl_example(tmp_path: Path) -> None:
    """One command brings up Prefect, a worker, the fakes and the API; the demo mailboxes are
    synced; the spec's curl example returns 202 and the job completes, visible in Prefect
    under its id; Ctrl-C stops every child process, even when started with SIGINT ignored."""
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
        output = _read_until(process, "Ctrl-C stops everything", timeout=240)
        assert "completed" in output
        key = (tmp_path / "data" / "demo-api-key").read_text().strip()
        assert key.startswith("wbk_") and "curl -X POST" in output
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

        statuses = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            view = httpx.get(
                f"http://127.0.0.1:{api_port}/v1/email/sync/{data['job_id']}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,  # a GET asks Prefect twice; on a loaded CI box that took > 5 s
            ).json()["data"]
            statuses.append(view["status"])
            if view["status"] in ("completed", "failed"):
                break
            time.sleep(0.2)
        assert statuses[-1] == "completed", view
        assert [m["performed_mode"] for m in view["mailboxes"]] == ["incremental"] * 2

        # The job is recorded as ended just before its run's last steps (summary artifact,
        # the COMPLETED state): the run may still be RUNNING for a moment.
        deadline = time.monotonic() + 60
        while True:
            runs = httpx.post(
                f"http://127.0.0.1:{prefect_port}/api/flow_runs/filter",
                json={"flow_runs": {"name": {"any_": [data["job_id"]]}}},
            ).json()
            if [r["state_type"] for r in runs] != ["RUNNING"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
        ui = httpx.get(
            f"http://127.0.0.1:{prefect_port}/runs/flow-run/{runs[0]['id']}",
            headers={"Accept": "text/html"},
            follow_redirects=True,
        )
        assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]
        logs = "".join(
            p.read_text(errors="replace") for p in (tmp_path / "data" / "logs").glob("*")
        )
        assert key not in logs and key not in json.dumps(runs)
    finally:
        returncode = stop_up(process)
    assert returncode == 0
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == []
