"""How the API is served, in a process or a thread: one set of uvicorn options for every stack."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mailsync.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

# The app factory uvicorn serves (`--factory`); bench/ serves another one beside it.
API_APP = "mailsync.api.app:create_app"


def api_server_options(settings: Settings) -> dict[str, Any]:
    """How the API is served: `uvicorn.Config` keyword arguments (`api_command` passes the
    same as flags; `api_in_thread` and the input-limit tests serve the app with them).

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


def api_command(settings: Settings, port: int, app: str = API_APP) -> list[str]:
    """The `uvicorn` command a stack runs the API with (`api_server_options` as flags), on
    `settings.api_host`; `app` is an app factory's import path."""
    options = api_server_options(settings)
    return [
        sys.executable, "-m", "uvicorn", app, "--factory",
        "--host", settings.api_host, "--port", str(port), "--no-access-log",
        "--http", str(options["http"]),
        "--h11-max-incomplete-event-size", str(options["h11_max_incomplete_event_size"]),
        "--timeout-keep-alive", str(options["timeout_keep_alive"]),
        "--limit-concurrency", str(options["limit_concurrency"]),
    ]  # fmt: skip


@contextmanager
def api_in_thread(app: FastAPI, settings: Settings) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 in a thread of this process, with `api_server_options`
    (for tests that reach into the API's orchestrator); yields its URL."""
    from mailsync.fakes.server import serve_in_thread  # the dev extra's: tests only

    with serve_in_thread(app, None, **api_server_options(settings)) as url:
        yield url
