"""`python -m mailsync.cli`: the `mailsync` command without its console script."""

from mailsync.cli import app

app()
