"""Serving the app under test as `mailsync up` serves it, on a real socket."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mailsync.devstack.api_server import api_server_options
from mailsync.fakes.server import serve_in_thread
from mailsync.settings import Settings


@contextmanager
def serve_like_up(app: Any, settings: Settings) -> Iterator[tuple[str, int]]:
    """Serve `app` with uvicorn in a thread, with the options `mailsync up` uses; yields
    (host, port)."""
    with serve_in_thread(app, None, **api_server_options(settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)
