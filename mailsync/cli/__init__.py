"""The `mailsync` command: run the local stack, administer workspaces, keys and mailboxes."""

from __future__ import annotations

import typer

from mailsync.cli import admin, messages, sync, up

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_show_locals=False)
admin.register(app)
messages.register(app)
sync.register(app)
up.register(app)

__all__ = ["app"]
