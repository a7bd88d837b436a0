"""Serves fake provider apps over HTTPS with uvicorn, in a background thread or as a process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from mailsync.fakes.tls import FakeTLS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server(app: FastAPI, tls: FakeTLS | None, port: int, **options: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(tls.cert_path) if tls else None,
        ssl_keyfile=str(tls.key_path) if tls else None,
        log_level="warning",
        access_log=False,
        **options,
    )
    return uvicorn.Server(config)


@contextmanager
def serve_in_thread(
    app: FastAPI, tls: FakeTLS | None, port: int | None = None, **options: Any
) -> Iterator[str]:
    """Run `app` on 127.0.0.1:<port> (https with `tls`) until the block exits; yields the URL.
    `options` are more uvicorn.Config settings (the API's, as `mailsync up` serves it)."""
    port = port or free_port()
    server = _server(app, tls, port, **options)
    thread = threading.Thread(target=server.run, name=f"fake-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"fake server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def _serve_all(servers: list[uvicorn.Server]) -> None:
    import asyncio

    await asyncio.gather(*(server.serve() for server in servers))


def serve_forever(apps: list[tuple[FastAPI, int]], tls: FakeTLS) -> None:
    """Serve several fake apps in one process until interrupted."""
    import asyncio

    asyncio.run(_serve_all([_server(app, tls, port) for app, port in apps]))
