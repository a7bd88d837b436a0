"""Input limits on a real server, over raw sockets: uvicorn configured as `mailsync up` runs it
(`devstack.api_server.api_server_options`), the real app in front of an unreachable Prefect (nothing
here gets past the middleware that matters), request quotas off.

Limits in these tests: body 64 KiB (413), body deadline 1 s (408), header section 8 KiB or
100 fields (431), keep-alive 1 s. 413 with a Content-Length is covered in test_errors.py.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailsync.api.app import create_app
from mailsync.settings import Settings
from tests.support.servers import serve_like_up

BODY_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 1


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The error envelope, checked: one `error` object with code, message, request id."""
        assert self.headers["content-type"] == "application/json", self.body
        error: dict[str, Any] = json.loads(self.body)["error"]
        assert error["message"] and error["request_id"] == self.headers["x-request-id"]
        return error


def read_answer(sock: socket.socket, timeout: float = 10) -> Answer:
    """One HTTP/1.1 response from the socket: Content-Length framed (all of ours), or
    delimited by the end of the connection (uvicorn's own 400)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    if "content-length" not in headers:
        while chunk := sock.recv(65536):
            body += chunk
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def request_head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    settings = Settings(
        data_dir=Path(tmp_path_factory.mktemp("limits")),
        prefect_api_url="http://127.0.0.1:9/api",
        request_quota_per_minute=0,
        address_quota_per_minute=0,
        body_timeout_seconds=BODY_TIMEOUT_S,
        api_keep_alive_seconds=KEEP_ALIVE_S,
    )
    assert (settings.max_header_bytes, settings.max_header_count) == (8192, 100)
    assert settings.max_body_bytes == 65536
    with serve_like_up(create_app(settings), settings) as address:
        yield address


def ask(server: tuple[str, int], raw: bytes) -> tuple[Answer, socket.socket]:
    sock = socket.create_connection(server, timeout=10)
    sock.sendall(raw)
    return read_answer(sock), sock


def test_431_too_many_header_fields(server: tuple[str, int]) -> None:
    """A head with more than 100 header fields gets 431 request_header_fields_too_large in
    the error envelope with Connection: close, and the connection is closed; 100 fields
    (Host included) pass."""
    pads = [f"X-Pad-{i}: {i}" for i in range(100)]
    answer, sock = ask(server, request_head("GET", "/openapi.json", *pads))
    assert answer.status == 431, answer.body
    error = answer.error()
    assert error["code"] == "request_header_fields_too_large"
    assert "101 header fields" in error["message"]
    assert answer.headers["connection"] == "close"
    assert closed_by_server(sock, 5)
    sock.close()
    answer, sock = ask(server, request_head("GET", "/openapi.json", *pads[:99]))
    assert answer.status == 200
    sock.close()


def test_431_header_section_too_large(server: tuple[str, int]) -> None:
    """Header fields of more than 8 KiB (as on the wire) get the JSON 431 and a closed
    connection; 8 KiB pass. Past uvicorn's own buffer (32 KiB of incomplete request head)
    the app never sees the request: uvicorn answers a plain-text 400 and closes, as
    devstack/api_server.py documents."""
    host = len(b"host: 127.0.0.1\r\n")
    fits = 8192 - host - len(b"x-pad: \r\n")
    answer, sock = ask(server, request_head("GET", "/openapi.json", "X-Pad: " + "a" * fits))
    assert answer.status == 200
    sock.close()
    answer, sock = ask(server, request_head("GET", "/openapi.json", "X-Pad: " + "a" * (fits + 1)))
    assert answer.status == 431, answer.body
    assert answer.error()["code"] == "request_header_fields_too_large"
    assert answer.headers["connection"] == "close" and closed_by_server(sock, 5)
    sock.close()
    # 30 KB still reach the app (JSON); 40 KB of a head not yet complete do not.
    answer, sock = ask(server, request_head("GET", "/health", "X-Pad: " + "a" * 30_000))
    assert answer.status == 431
    sock.close()
    unfinished = request_head("GET", "/health", "X-Pad: " + "a" * 40_000)[:-4]
    answer, sock = ask(server, unfinished)
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.body == b"Invalid HTTP request received."  # read to the connection's end
    sock.close()


def test_413_chunked_body(server: tuple[str, int]) -> None:
    """A chunked body (no Content-Length) is refused 413 payload_too_large as soon as more
    than 64 KiB have arrived, in the envelope, with Connection: close; the client is answered
    while it is still sending."""
    sock = socket.create_connection(server, timeout=10)
    sock.sendall(
        request_head(
            "POST",
            "/v1/email/sync",
            "Authorization: Bearer wbk_" + "0" * 40,
            "Content-Type: application/json",
            "Transfer-Encoding: chunked",
        )
    )
    sent = 0
    chunk = b"x" * 4096
    while sent < 1024 * 1024 and not select.select([sock], [], [], 0)[0]:
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            break
        sent += len(chunk)
        time.sleep(0.002)
    answer = read_answer(sock)
    assert answer.status == 413, answer.body
    assert answer.error()["code"] == "payload_too_large"
    assert answer.headers["connection"] == "close"
    assert 64 * 1024 < sent < 1024 * 1024, sent  # answered mid-upload, not after it
    sock.close()


def test_408_body_that_does_not_arrive(server: tuple[str, int]) -> None:
    """A body that has not fully arrived 1 s after the request gets 408 request_timeout in
    the envelope with Connection: close, and the server closes the connection."""
    sock = socket.create_connection(server, timeout=10)
    head = request_head(
        "POST",
        "/v1/email/sync",
        "Authorization: Bearer wbk_" + "0" * 40,
        "Content-Type: application/json",
        "Content-Length: 100",
    )
    started = time.monotonic()
    sock.sendall(head + b'{"mode": ')  # and nothing more
    answer = read_answer(sock)
    waited = time.monotonic() - started
    assert answer.status == 408, answer.body
    assert answer.error()["code"] == "request_timeout"
    assert answer.headers["connection"] == "close"
    assert BODY_TIMEOUT_S * 0.9 <= waited < BODY_TIMEOUT_S + 5, waited
    assert closed_by_server(sock, 5)
    sock.close()


def test_408_trickled_body_cannot_stretch_the_deadline(server: tuple[str, int]) -> None:
    """The deadline is for the whole body: a chunked body trickled a byte every 0.2 s (each
    byte arriving well within any per-read timeout) is still cut off with 408 about 1 s after
    the request, not after the trickle ends (it would take 10 s)."""
    sock = socket.create_connection(server, timeout=10)
    sock.sendall(
        request_head(
            "POST",
            "/v1/email/sync",
            "Authorization: Bearer wbk_" + "0" * 40,
            "Transfer-Encoding: chunked",
        )
    )
    started = time.monotonic()
    for _ in range(50):
        if select.select([sock], [], [], 0.2)[0]:
            break
        try:
            sock.sendall(b"1\r\n \r\n")
        except OSError:
            break
    answer = read_answer(sock)
    waited = time.monotonic() - started
    assert answer.status == 408, answer.body
    assert answer.error()["code"] == "request_timeout"
    assert BODY_TIMEOUT_S * 0.9 <= waited < BODY_TIMEOUT_S + 5, waited
    sock.close()


def test_idle_keep_alive_connection_is_closed(server: tuple[str, int]) -> None:
    """After a response, a kept-alive connection that sends nothing more is closed by the
    server after the keep-alive timeout (1 s here, `MAILSYNC_API_KEEP_ALIVE_SECONDS`)."""
    answer, sock = ask(server, request_head("GET", "/openapi.json"))
    assert answer.status == 200 and answer.headers.get("connection") != "close"
    started = time.monotonic()
    assert closed_by_server(sock, KEEP_ALIVE_S + 5)
    assert time.monotonic() - started >= KEEP_ALIVE_S * 0.9
    sock.close()
