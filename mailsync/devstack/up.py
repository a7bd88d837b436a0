"""`mailsync up`: the Prefect server, workers, the API and (with --demo) the fakes, supervised."""

from __future__ import annotations

import faulthandler
import os
import signal
import socket
import sys
import time
from typing import Any

from rich.console import Console
from rich.panel import Panel

from mailsync import db
from mailsync.devstack import demo as demo_mod
from mailsync.devstack.processes import (
    Stack,
    StackError,
    http_ok,
    prefect_env,
    start_prefect_server,
    start_worker,
    wait_for_workers,
    wait_until,
    worker_name,
)
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings, ensure_private_dir

console = Console()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def api_server_options(settings: Settings) -> dict[str, Any]:
    """How the API is served: `uvicorn.Config` keyword arguments (`api_command` passes the
    same as flags; the input-limit tests serve the app with them).

    - `http="h11"`, explicitly: "auto" would pick httptools whenever it happens to be
      installed (uvicorn[standard]), with other limits and error behaviour.
    - `h11_max_incomplete_event_size`: how much of an incomplete request head (request line
      and header fields) uvicorn buffers; 4x `max_header_bytes`, at least 32 KiB, so every
      head up to that size reaches HeaderLimitMiddleware and gets the JSON 431 when it is
      over our limits. When more than that is buffered without the head being complete,
      the app never sees the request: uvicorn answers a plain-text `400 Invalid HTTP request
      received.` and closes the connection. (h11 checks only incomplete heads: a longer head
      that arrives whole in one socket read, at most 256 KiB, is parsed and gets the 431.)
    - `timeout_keep_alive`: an idle connection after a response is closed after this.
    - `limit_concurrency`: past this many open connections or running requests uvicorn
      answers a plain-text 503 itself; a backstop far above the in-flight caps of
      mailsync/api/overload.py, which answer first with a JSON 503 and Retry-After.

    Not bounded in time by uvicorn: a request head that never completes (a new connection
    that sends nothing, or a head trickled a byte at a time; any byte received also cancels
    the keep-alive timer). Such connections hold a file descriptor and count towards
    `limit_concurrency`, so enough of them make uvicorn refuse everyone with its 503; in
    front of the internet, a reverse proxy's header timeout (e.g. nginx
    `client_header_timeout`) is what ends them. A slow body is bounded: 408 after
    `body_timeout_seconds` (mailsync/api/middleware.py).
    """
    return {
        "http": "h11",
        "h11_max_incomplete_event_size": max(32 * 1024, 4 * settings.max_header_bytes),
        "timeout_keep_alive": settings.api_keep_alive_seconds,
        "limit_concurrency": settings.api_max_connections,
    }


def api_command(settings: Settings, port: int) -> list[str]:
    """The `uvicorn` command `mailsync up` runs the API with (`api_server_options` as flags)."""
    options = api_server_options(settings)
    return [
        sys.executable, "-m", "uvicorn", "mailsync.api.app:create_app", "--factory",
        "--host", settings.api_host, "--port", str(port), "--no-access-log",
        "--http", str(options["http"]),
        "--h11-max-incomplete-event-size", str(options["h11_max_incomplete_event_size"]),
        "--timeout-keep-alive", str(options["timeout_keep_alive"]),
        "--limit-concurrency", str(options["limit_concurrency"]),
    ]  # fmt: skip


def _prefect(stack: Stack, settings: Settings) -> str:
    external = settings.prefect_api_url or os.environ.get("PREFECT_API_URL")
    if external:
        wait_until(http_ok(f"{external.rstrip('/')}/health"), f"Prefect at {external}", 30)
        console.print(f"using the Prefect server at {external}")
        return external
    if not _port_free(settings.prefect_port):
        raise StackError(
            f"port {settings.prefect_port} is taken; set PREFECT_API_URL to use a running "
            "Prefect server, or MAILSYNC_PREFECT_PORT to start one elsewhere"
        )
    with console.status("starting the Prefect server (first start takes ~20 s)"):
        return start_prefect_server(stack, settings.prefect_port)


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM (`kill`, a service manager) both stop the stack in order.

    Also when started with SIGINT ignored (from a script's background job, as POSIX shells
    do without job control): Python would keep ignoring it and Ctrl-C would do nothing. The
    children run in sessions of their own, so an `up` killed by SIGTERM's default action would
    leave all of them running. A second signal during the stop is ignored: the stop finishes.
    """

    def stop(signum: int, _frame: object) -> None:
        for each in (signal.SIGINT, signal.SIGTERM):
            signal.signal(each, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for each in (signal.SIGINT, signal.SIGTERM):
        signal.signal(each, stop)


def run_stack(
    settings: Settings,
    *,
    demo: bool,
    port: int,
    workers: int,
    seed_messages: int,
    worker_type: str = "warm",
) -> None:
    # `kill -USR1` prints every thread's stack: where a stop that hangs is waiting.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    _stop_on_signals()
    data_dir = settings.data_dir.resolve()
    # Credentials, mail, the Prefect database and logs live here: its owner's only.
    ensure_private_dir(data_dir)
    settings = settings.model_copy(update={"data_dir": data_dir})
    database_url = settings.resolved_database_url
    db.upgrade(database_url)
    settings.fernet_key()  # generate it now, before several processes race to
    if not _port_free(port):
        raise SystemExit(f"port {port} is taken; pass --port")
    base_api = f"http://127.0.0.1:{settings.prefect_port}/api"
    env = {
        **os.environ,
        **prefect_env(data_dir / "prefect", base_api),
        "MAILSYNC_DATA_DIR": str(data_dir),
        "MAILSYNC_DATABASE_URL": database_url,
    }
    stack = Stack(data_dir / "logs", env)
    try:
        if demo:
            with console.status("starting the fake Gmail and Microsoft servers"):
                demo_fakes = demo_mod.start_fakes(stack, data_dir, seed_messages)
            env.update(demo_fakes.env())
        api_url = _prefect(stack, settings)
        env["PREFECT_API_URL"] = api_url
        from deployments.register import register

        register(api_url, work_pool=settings.work_pool)
        for index in range(workers):
            start_worker(stack, settings.work_pool, index, settings.worker_limit, worker_type)
        with console.status("waiting for the Prefect workers"):
            names = [worker_name(i) for i in range(workers)]
            wait_for_workers(stack, api_url, settings.work_pool, names)
        stack.spawn("api", api_command(settings, port), {"MAILSYNC_PREFECT_API_URL": api_url})
        api = f"http://{settings.api_host}:{port}"
        with console.status("waiting for the API"):
            wait_until(http_ok(f"{api}/health"), "the API", 60, stack)
        ui = api_url.removesuffix("/api")
        lines = [f"API        {api}", f"API docs   {api}/docs", f"Prefect UI {ui}",
                 f"logs       {data_dir / 'logs'}"]  # fmt: skip
        demo_text = _run_demo(settings, demo_fakes, api, api_url) if demo else ""
        console.print(Panel("\n".join(lines), title="mailsync is up", expand=False))
        # A plain print, not rich: the curl command must paste without box characters.
        print(demo_text, flush=True)
        console.print("Ctrl-C stops everything.")
        while True:
            stack.check()
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    except StackError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from exc
    finally:
        stack.stop()


def _run_demo(settings: Settings, fakes: demo_mod.Fakes, api: str, prefect_api: str) -> str:
    from mailsync.cli import follow

    key = demo_mod.seed_workspace(settings, fakes)
    orchestrator = Orchestrator(prefect_api, settings)
    with db.session_scope(settings.resolved_database_url) as session:
        job = orchestrator.trigger(session, demo_mod.WORKSPACE, "incremental", None, trigger="cli")
    console.print(f"initial sync of the demo mailboxes: {job.id}")
    follow(settings, orchestrator, job.id)
    orchestrator.close()
    curl = (
        f"curl -X POST {api}/v1/email/sync \\\n"
        f'  -H "Authorization: Bearer {key}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        "  -d '{}'"
    )
    return "\n".join(
        [
            f"demo API key (also in {settings.data_dir / 'demo-api-key'}):",
            key,
            "",
            "trigger a sync (the spec's example):",
            curl,
            "",
            "then follow the job:",
            f'curl -H "Authorization: Bearer {key}" {api}/v1/email/sync/<job_id>',
            "",
        ]
    )
