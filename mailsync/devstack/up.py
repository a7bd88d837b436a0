"""`mailsync up`: the local stack (stack.py) in the foreground, supervised until a signal."""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from dataclasses import dataclass

from rich.console import Console
from rich.panel import Panel

from mailsync import db
from mailsync.devstack import demo as demo_mod
from mailsync.devstack.processes import port_free
from mailsync.devstack.stack import ApiSpec, FakesProcess, LocalStack, StackSpec
from mailsync.errors import StackError
from mailsync.settings import Settings, ensure_private_dir

console = Console()


@dataclass(frozen=True)
class UpOptions:
    """`mailsync up`'s flags."""

    demo: bool = False
    port: int = 8000
    workers: int = 1
    seed_messages: int = 3000
    worker_type: str = "warm"


def up_spec(settings: Settings, options: UpOptions) -> StackSpec:
    """The stack `mailsync up` runs: everything under `settings.data_dir` (already resolved),
    its Prefect server on `prefect_port` unless PREFECT_API_URL names a running one, the
    deployments with their schedules, the API on `options.port`, and with --demo the fakes.

    Its own Prefect server takes the auth string kept in the data dir (or the configured one);
    a running Prefect is called with the configured one, if any."""
    prefect_url = settings.prefect_api_url or os.environ.get("PREFECT_API_URL") or None
    auth = (
        settings.prefect_client_auth_string()
        if prefect_url
        else settings.prefect_server_auth_string()
    )
    return StackSpec(
        workdir=settings.data_dir,
        data_dir=settings.data_dir,
        database_url=settings.resolved_database_url,
        prefect_port=settings.prefect_port,
        prefect_url=prefect_url,
        prefect_auth_string=auth,
        work_pool=settings.work_pool,
        workers=options.workers,
        worker_type=options.worker_type,
        worker_limit=settings.worker_limit,
        api=ApiSpec(settings, options.port),
        fakes=FakesProcess(options.seed_messages) if options.demo else None,
        env=demo_mod.push_env(settings, options.port) if options.demo else {},
    )


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


def _panel(running: LocalStack, settings: Settings) -> Panel:
    api = running.api_url
    ui = running.prefect_api_url.removesuffix("/api")
    lines = [f"API        {api}", f"API docs   {api}/docs", f"Prefect UI {ui}"]
    if not running.spec.prefect_url and settings.prefect_auth_string is None:
        # Where the login is, never the secret itself (the panel may end up in a log).
        lines.append(f"  login    the auth string in {settings.prefect_auth_string_path}")
    lines.append(f"logs       {running.spec.log_dir}")
    return Panel("\n".join(lines), title="mailsync is up", expand=False)


def run_stack(settings: Settings, options: UpOptions, follow: demo_mod.FollowJob) -> None:
    """Run the stack until SIGINT or SIGTERM, then stop it in order; `follow` shows the
    demo's first sync (the CLI's progress display: devstack does not import the CLI)."""
    # `kill -USR1` prints every thread's stack: where a stop that hangs is waiting.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    _stop_on_signals()
    data_dir = settings.data_dir.resolve()
    # Credentials, mail, the Prefect database and logs live here: its owner's only.
    ensure_private_dir(data_dir)
    settings = settings.model_copy(update={"data_dir": data_dir})
    db.upgrade(settings.resolved_database_url)
    settings.fernet_key()  # generate it now, before several processes race to
    spec = up_spec(settings, options)
    if spec.prefect_url and not spec.prefect_auth_string:
        console.print(
            f"[yellow]warning:[/yellow] no Prefect auth string is set for {spec.prefect_url}; "
            "set MAILSYNC_PREFECT_AUTH_STRING (or PREFECT_API_AUTH_STRING) if it needs one"
        )
    if not port_free(options.port):
        raise SystemExit(f"port {options.port} is taken; pass --port")
    running = LocalStack(spec)
    try:
        running.start(console)
        demo_text = ""
        if running.fakes is not None:
            assert running.api_url is not None
            demo_text = demo_mod.run_demo(
                settings, running.fakes, running.api_url, running.prefect_api_url, follow
            )
        console.print(_panel(running, settings))
        # A plain print, not rich: the curl command must paste without box characters.
        print(demo_text, flush=True)
        console.print("Ctrl-C stops everything.")
        while True:
            running.check()
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    except StackError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from exc
    finally:
        running.stop()
