"""Standard Webhooks signing: interoperable with the spec, and what receivers reject."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailsync.webhooks.signing import (
    WebhookVerificationError,
    generate_secret,
    sign,
    signature_headers,
    verify,
)

# The Standard Webhooks reference test vector (the same in every reference library).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_reproduces_the_standard_webhooks_test_vector() -> None:
    """Our signature is byte-for-byte the reference one, so any Standard Webhooks library
    (svix, standardwebhooks) verifies what mailsync sends."""
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": SPEC_SIGNATURE,
    }
    assert verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP) == SPEC_ID


def test_generated_secrets_are_whsec_base64_of_32_bytes() -> None:
    """Secrets have the whsec_ form receivers' libraries expect, and differ every time."""
    secret = generate_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert generate_secret() != secret


def test_a_signed_message_verifies_and_header_case_does_not_matter() -> None:
    """What we send verifies with the endpoint's secret; frameworks' header casing is fine."""
    secret, body = generate_secret(), b'{"type":"email.sync.completed"}'
    headers = signature_headers([secret], "msg_1", body)
    assert verify(secret, {k.title(): v for k, v in headers.items()}, body) == "msg_1"


def test_a_tampered_body_or_id_or_another_secret_is_rejected() -> None:
    """Any change to the signed content, or a different secret, fails verification."""
    secret, body = generate_secret(), b'{"data":{"counts":{"messages_added":3}}}'
    headers = signature_headers([secret], "msg_1", body)
    with pytest.raises(WebhookVerificationError):
        verify(secret, headers, body.replace(b"3", b"4"))
    with pytest.raises(WebhookVerificationError):
        verify(secret, {**headers, "webhook-id": "msg_2"}, body)
    with pytest.raises(WebhookVerificationError):
        verify(generate_secret(), headers, body)


@pytest.mark.parametrize("skew", [-301, 301, -3600, 86400])
def test_timestamps_outside_the_tolerance_are_rejected(skew: int) -> None:
    """A replayed (old) or forged future timestamp fails even with a valid signature."""
    secret, body = generate_secret(), b"{}"
    headers = signature_headers([secret], "msg_1", body, timestamp=int(time.time()) + skew)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(secret, headers, body)


def test_missing_or_malformed_headers_are_rejected() -> None:
    """No header may be missing; a non-numeric timestamp is an error, not a crash."""
    secret, body = generate_secret(), b"{}"
    headers = signature_headers([secret], "msg_1", body)
    for name in headers:
        with pytest.raises(WebhookVerificationError):
            verify(secret, {k: v for k, v in headers.items() if k != name}, body)
    with pytest.raises(WebhookVerificationError):
        verify(secret, {**headers, "webhook-timestamp": "soon"}, body)


def test_during_a_rotation_overlap_both_secrets_verify() -> None:
    """With two secrets the header carries two v1 entries: receivers holding either the new
    or the old secret accept the message; a third secret does not."""
    new, old, body = generate_secret(), generate_secret(), b"{}"
    headers = signature_headers([new, old], "msg_1", body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify(new, headers, body) == verify(old, headers, body) == "msg_1"
    with pytest.raises(WebhookVerificationError):
        verify(generate_secret(), headers, body)


def readme_verifier() -> Callable[..., str]:
    """The receiver snippet exactly as README.md shows it."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    [code] = [b for b in blocks if "def verify_webhook" in b]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    verifier: Callable[..., str] = namespace["verify_webhook"]
    return verifier


def test_the_readme_receiver_snippet_accepts_ours_and_rejects_forgeries() -> None:
    """The README's standalone helper verifies real mailsync signatures (and the spec vector's
    format), and rejects a tampered body, an old timestamp and a missing header."""
    verify_webhook = readme_verifier()
    new, old, body = generate_secret(), generate_secret(), b'{"type":"email.sync.completed"}'
    headers = signature_headers([new, old], "msg_1", body)
    assert verify_webhook(new, headers, body) == verify_webhook(old, headers, body) == "msg_1"
    for secret, hdrs, payload in (
        (new, headers, body + b" "),
        (new, signature_headers([new], "msg_1", body, timestamp=int(time.time()) - 600), body),
        (new, {k: v for k, v in headers.items() if k != "webhook-id"}, body),
        (new, {k: v for k, v in headers.items() if k != "webhook-timestamp"}, body),
        (generate_secret(), headers, body),
    ):
        with pytest.raises(ValueError):
            verify_webhook(secret, hdrs, payload)
