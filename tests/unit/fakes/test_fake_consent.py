"""The fakes' authorization endpoints hold real providers' rules: PKCE S256 checked at the
exchange, codes single-use and bound to their client and redirect, registered clients and
redirects only, device codes pending until the user approves."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from fastapi.testclient import TestClient

from mailsync.fakes import gmail, microsoft
from mailsync.fakes.consent import s256

REDIRECT = "https://mailsync.test/v1/oauth/callback"
VERIFIER = "v" * 64


def _code(client: TestClient, url: str, params: dict[str, str]) -> str:
    answer = client.get(url, params=params, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["state"] == ["s1"]
    return query["code"][0]


def test_google_checks_pkce_and_uses_codes_once() -> None:
    """A wrong or missing code_verifier, a reused code, another redirect_uri: invalid_grant
    or redirect_uri_mismatch; the right verifier gets a refresh token that refreshes."""
    with TestClient(gmail.create_app(seed_messages=1)) as c:
        registered = c.post("/_admin/oauth-clients", json={"redirect_uris": [REDIRECT]}).json()
        c.post("/_admin/mailboxes", json={"address": "a@gmail.example"})
        auth = {
            "client_id": registered["client_id"], "redirect_uri": REDIRECT,
            "response_type": "code", "scope": "https://www.googleapis.com/auth/gmail.readonly",
            "state": "s1", "login_hint": "a@gmail.example", "code_challenge": s256(VERIFIER),
            "code_challenge_method": "S256",
        }  # fmt: skip
        form = {
            "grant_type": "authorization_code", "client_id": registered["client_id"],
            "client_secret": registered["client_secret"], "redirect_uri": REDIRECT,
        }  # fmt: skip
        wrong_exchanges = (
            {"code_verifier": "x" * 64},
            {},
            {"code_verifier": VERIFIER, "redirect_uri": REDIRECT + "/x"},
        )
        for wrong in wrong_exchanges:
            code = _code(c, "/o/oauth2/v2/auth", auth)
            answer = c.post("/token", data={**form, "code": code, **wrong})
            assert answer.status_code == 400, wrong
        code = _code(c, "/o/oauth2/v2/auth", auth)
        ok = c.post("/token", data={**form, "code": code, "code_verifier": VERIFIER})
        assert ok.status_code == 200 and ok.json()["refresh_token"]
        again = c.post("/token", data={**form, "code": code, "code_verifier": VERIFIER})
        assert again.json()["error"] == "invalid_grant"
        refreshed = c.post("/token", data={
            "grant_type": "refresh_token", "client_id": registered["client_id"],
            "client_secret": registered["client_secret"],
            "refresh_token": ok.json()["refresh_token"],
        })  # fmt: skip
        assert refreshed.status_code == 200
        elsewhere = c.get(
            "/o/oauth2/v2/auth", params={**auth, "redirect_uri": "https://x.example/"}
        )
        assert elsewhere.status_code == 400 and "redirect_uri_mismatch" in elsewhere.text
        stranger = c.get("/o/oauth2/v2/auth", params={**auth, "client_id": "nobody"})
        assert stranger.status_code == 401


def test_microsoft_device_codes_wait_for_the_user() -> None:
    """The device code grant answers authorization_pending until the user approves the code
    on the verification page, then a delegated token for that user, once."""
    with TestClient(microsoft.create_app(seed_messages=1)) as c:
        app = c.post("/_admin/mailboxes", json={"address": "b@contoso.example"}).json()
        tenant, client_id = app["credentials"]["tenant_id"], app["credentials"]["client_id"]
        scope = "https://graph.microsoft.com/Mail.Read offline_access openid profile"
        device = c.post(f"/{tenant}/oauth2/v2.0/devicecode",
                        data={"client_id": client_id, "scope": scope}).json()  # fmt: skip
        grant = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                 "client_id": client_id, "device_code": device["device_code"]}  # fmt: skip
        pending = c.post(f"/{tenant}/oauth2/v2.0/token", data=grant)
        assert pending.json()["error"] == "authorization_pending"
        approved = c.post(f"/_admin/device-codes/{device['user_code']}/approve",
                          json={"address": "b@contoso.example"})  # fmt: skip
        assert approved.status_code == 200
        token = c.post(f"/{tenant}/oauth2/v2.0/token", data=grant)
        assert token.status_code == 200 and token.json()["refresh_token"]
        assert c.post(f"/{tenant}/oauth2/v2.0/token", data=grant).status_code == 400
