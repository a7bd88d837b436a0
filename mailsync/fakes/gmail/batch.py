"""Google batch requests: multipart/mixed of application/http parts, parsed, served and rendered."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from email.parser import BytesParser
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from mailsync.fakes.faults import Pause
from mailsync.fakes.gmail.errors import ApiResponse, fault_response, google_error, json_response
from mailsync.fakes.gmail.rest import serve
from mailsync.fakes.gmail.state import FakeGmail

MAX_PARTS = 100


@dataclass
class InnerRequest:
    """One HTTP request embedded in a batch part."""

    content_id: str | None
    method: str
    path: str  # still percent-encoded, as sent
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""


def parse_batch(body: bytes, content_type: str) -> list[InnerRequest]:
    """Split a batch request body; ValueError when it is not multipart/mixed of HTTP requests."""
    if not content_type.lower().startswith("multipart/"):
        raise ValueError("batch requests must be multipart/mixed")
    # The batch body has no headers of its own; the MIME parser needs the boundary in front.
    message = BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ValueError("batch body is not multipart")
    parts = message.get_payload()
    assert isinstance(parts, list)
    return [_parse_part(part) for part in parts]


def _parse_part(part: Any) -> InnerRequest:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise ValueError("a batch part must be a single application/http request")
    text = payload.decode("utf-8").replace("\r\n", "\n")
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    request_line = lines[0].split(" ")
    if len(request_line) < 2:
        raise ValueError("malformed request line in batch part")
    method, target = request_line[0].upper(), request_line[1]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    url = urlsplit(target)
    return InnerRequest(
        content_id=part.get("Content-ID"),
        method=method,
        path=url.path,
        query=parse_qsl(url.query, keep_blank_values=True),
        headers=headers,
        body=body.encode(),
    )


def response_content_id(request_content_id: str | None) -> str:
    """Google answers part `<x>` with `<response-x>`; clients match parts on that."""
    inner = (request_content_id or "").strip()
    if inner.startswith("<") and inner.endswith(">"):
        inner = inner[1:-1]
    return f"<response-{inner}>"


def render_batch(responses: list[tuple[str | None, ApiResponse]]) -> tuple[bytes, str]:
    """Encode the answers as Google does; returns (body, content type with its boundary)."""
    boundary = "batch_" + secrets.token_urlsafe(18).replace("-", "").replace("_", "")
    chunks: list[bytes] = []
    for content_id, resp in responses:
        payload = b"" if resp.body is None else json.dumps(resp.body, indent=2).encode()
        reason = (
            HTTPStatus(resp.status).phrase if resp.status in HTTPStatus._value2member_map_ else ""
        )
        inner_headers = {"Content-Type": "application/json; charset=UTF-8", **resp.headers}
        inner_headers["Content-Length"] = str(len(payload))
        inner = f"HTTP/1.1 {resp.status} {reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in inner_headers.items()
        )
        chunks.append(
            (
                f"--{boundary}\r\n"
                "Content-Type: application/http\r\n"
                f"Content-ID: {response_content_id(content_id)}\r\n"
                "\r\n"
                f"{inner}\r\n"
            ).encode()
            + payload
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/mixed; boundary={boundary}"


def serve_batch(
    fake: FakeGmail, body: bytes, content_type: str, authorization: str | None
) -> ApiResponse | tuple[bytes, str]:
    """A Google batch: each part is dispatched, counted, fault-checked and charged against
    the quota on its own; a slowed mailbox delays the whole answer once."""
    fault = fake.control.record("batch")
    if fault is not None:
        return fault_response(fault)
    try:
        parts = parse_batch(body, content_type)
    except (ValueError, UnicodeDecodeError) as exc:
        return google_error(400, f"Failed to parse batch request: {exc}", "badRequest")
    if len(parts) > MAX_PARTS:
        return google_error(
            400, f"Too many requests in batch; the limit is {MAX_PARTS}.", "badRequest"
        )
    answers = []
    delay = Pause()
    for part in parts:
        if not part.path.startswith("/gmail/v1/"):
            answers.append((part.content_id, google_error(404, "Not Found", "notFound")))
            continue
        auth = part.headers.get("authorization") or authorization
        answer, part_delay = serve(fake, part.method, part.path, part.query, auth)
        answers.append((part.content_id, answer))
        delay = delay.longest(part_delay)
    delay.wait()
    return render_batch(answers)


def batch_router(fake: FakeGmail) -> APIRouter:
    """The documented batch URL, and the one the discovery document's batchPath yields."""
    router = APIRouter()

    async def batch(request: Request) -> Response:
        # In a worker thread: a big batch (or a slowed mailbox) must not stall the event loop.
        result = await run_in_threadpool(
            serve_batch,
            fake,
            await request.body(),
            request.headers.get("content-type", ""),
            request.headers.get("authorization"),
        )
        if isinstance(result, ApiResponse):
            return json_response(result)
        body, content_type = result
        return Response(body, media_type=None, headers={"Content-Type": content_type})

    router.add_api_route("/batch/gmail/v1", batch, methods=["POST"])
    router.add_api_route("/batch", batch, methods=["POST"])
    return router
