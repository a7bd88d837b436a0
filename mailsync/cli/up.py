"""The local stack's commands: `mailsync up` (devstack/up.py runs it) and `mailsync fakes`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from mailsync.cli.progress import follow
from mailsync.devstack import fakes as devstack_fakes
from mailsync.devstack.up import UpOptions, run_stack
from mailsync.settings import get_settings


def register(app: typer.Typer) -> None:
    """Add `fakes` and `up` to `app`."""
    app.command()(fakes)
    app.command()(up)


def fakes(
    gmail_port: int = 8101,
    microsoft_port: int = 8102,
    seed_messages: int = 3000,
    tls_dir: Path = Path(".data/fakes-tls"),
) -> None:
    """Serve the fake Gmail and Microsoft providers over HTTPS (for demos and tests)."""
    devstack_fakes.serve(gmail_port, microsoft_port, seed_messages, tls_dir)


class WorkerType(StrEnum):
    """`mailsync up --worker-type` (README, "Workers")."""

    warm = "warm"
    process = "process"


def up(
    demo: Annotated[bool, typer.Option(help="Also run the fake providers and a demo.")] = False,
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Prefect workers.")] = 1,
    seed_messages: Annotated[int, typer.Option(help="Demo messages per mailbox.")] = 3000,
    worker_type: Annotated[
        WorkerType,
        typer.Option(
            help="warm: fork runs from a pre-warmed parent; process: Prefect's stock worker."
        ),
    ] = WorkerType.warm,
) -> None:
    """Run the whole service on this machine until Ctrl-C."""
    options = UpOptions(demo, port, workers, seed_messages, worker_type.value)
    run_stack(get_settings(), options, follow=follow)
