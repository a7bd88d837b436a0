"""`mailsync messages search`: the API's message search from the command line, as a table."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mailsync import db
from mailsync.cli.common import console, fail, ready_settings
from mailsync.core import workspaces
from mailsync.core.search import store
from mailsync.errors import SearchInputError

messages_app = typer.Typer(help="The message index.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(messages_app, name="messages")


@messages_app.command("search")
def search(
    workspace: Annotated[str, typer.Option("--workspace", "-w")],
    q: Annotated[str, typer.Argument(help='Words (AND-ed), "a phrase", word*.')] = "",
    sender: Annotated[str | None, typer.Option("--from", help="Sender address.")] = None,
    to: Annotated[str | None, typer.Option(help="Recipient address (to or cc).")] = None,
    label: Annotated[str | None, typer.Option(help="Gmail label id or Graph folder.")] = None,
    provider: Annotated[str | None, typer.Option(help="gmail or microsoft.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=store.MAX_LIMIT)] = store.DEFAULT_LIMIT,
) -> None:
    """Search a workspace's live index, newest first (as GET /v1/email/messages does)."""
    settings = ready_settings()
    filters = store.Filters(
        q=q or None, sender=sender, recipient=to, label=label, provider=provider
    )
    with db.session_scope(settings.resolved_database_url) as session:
        if not workspaces.workspace_exists(session, workspace):
            raise fail(f"workspace {workspace!r} does not exist")
        try:
            page = store.search(session, workspace, filters, limit=limit)
        except SearchInputError as exc:
            raise fail(f"{exc.param}: {exc.message}") from exc
    table = Table("date", "from", "subject", "provider", "id")
    for message in page.messages:
        table.add_row(
            message.date or "-", message.sender or "-", message.subject or "", message.provider,
            message.id,
        )  # fmt: skip
    console.print(table)
    more = " (more: narrow the search or raise --limit)" if page.next_cursor else ""
    console.print(f"{len(page.messages)} message(s){more}")
