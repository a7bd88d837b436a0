"""Which redirect_uris a consent flow may end at: scheme, host, port and path of an
allow-list entry exactly; a query is kept; fragments, other paths and hosts are refused."""

from __future__ import annotations

import pytest

from mailsync.core.consent import redirect_allowed, with_params

ALLOW = ("https://app.example/connected", "http://localhost:3000/cb")


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("https://app.example/connected", True),
        ("https://APP.example/connected?tab=mail", True),
        ("https://app.example/connected/", False),
        ("https://app.example/connected#frag", False),
        ("http://app.example/connected", False),
        ("https://app.example.evil.com/connected", False),
        ("https://app.example:8443/connected", False),
        ("http://localhost:3000/cb", True),
        ("http://localhost:3001/cb", False),
        ("javascript:alert(1)", False),
        ("", False),
    ],
)
def test_redirect_allow_list(uri: str, allowed: bool) -> None:
    """Only the exact places the operator listed can receive a mailbox id or an error."""
    assert redirect_allowed(uri, ALLOW) is allowed


def test_parameters_are_added_to_the_query_kept() -> None:
    """The application's own query survives; ours is appended, URL-encoded."""
    assert with_params("https://a.example/cb?tab=x", {"error": "access_denied", "d": "a b"}) == (
        "https://a.example/cb?tab=x&error=access_denied&d=a+b"
    )
