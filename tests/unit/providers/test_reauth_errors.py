"""Which provider refusals mean "the user must consent again" (ReauthRequiredError) and which
are other credential problems (AuthError) that re-consenting would not fix."""

from __future__ import annotations

import httplib2
import pytest
from googleapiclient.errors import HttpError

from mailsync.errors import AuthError, ReauthRequiredError
from mailsync.providers.gmail.errors import translate_http_error
from mailsync.providers.microsoft.errors import raise_for_token_error


@pytest.mark.parametrize(
    ("error", "reauth"),
    [
        ("invalid_grant", True),
        ("interaction_required", True),
        ("consent_required", True),
        ("invalid_client", False),
        ("unauthorized_client", False),
        ("invalid_scope", False),
    ],
)
def test_microsoft_token_refusals(error: str, reauth: bool) -> None:
    """A refused refresh of a revoked or consent-withdrawn grant needs the user again; a wrong
    client secret or scope is the operator's to fix (still provider_auth_failed)."""
    with pytest.raises(AuthError) as raised:
        raise_for_token_error({"error": error, "error_description": "AADSTS50173: x"}, 400, None)
    assert isinstance(raised.value, ReauthRequiredError) is reauth
    assert raised.value.code == "provider_auth_failed"


@pytest.mark.parametrize(("status", "reauth"), [(401, True), (403, False)])
def test_gmail_api_refusals(status: int, reauth: bool) -> None:
    """Gmail's 401 comes after google-auth refreshed and retried (the grant is refused); a 403
    (scope, delegation) is not fixed by the same consent."""
    response = httplib2.Response({"status": status})
    error = translate_http_error(HttpError(response, b"{}"), "messages.list")
    assert isinstance(error, AuthError)
    assert isinstance(error, ReauthRequiredError) is reauth
