"""What every `mailsync` command shares: its consoles, how it fails, the settings it runs with."""

from __future__ import annotations

import typer
from rich.console import Console

from mailsync import db
from mailsync.settings import Settings, get_settings

console = Console()
err = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Print `message` as an error on stderr; the exit (status 1) for the caller to raise."""
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def ready_settings() -> Settings:
    """The settings, with the application database's schema upgraded."""
    settings = get_settings()
    db.upgrade(settings.resolved_database_url)
    return settings
