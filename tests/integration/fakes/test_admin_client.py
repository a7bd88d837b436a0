"""The typed admin clients (mailsync.fakes.client) against the real fakes over HTTPS."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import google_auth_httplib2
import httplib2
import httpx
import pytest
from google.oauth2 import service_account

from mailsync.fakes import gmail, microsoft
from mailsync.fakes.client import (
    AdminError,
    FaultPlan,
    GmailAccount,
    GmailAdmin,
    MicrosoftAccount,
    MicrosoftAdmin,
    admin_client,
)
from mailsync.fakes.server import serve_in_thread
from mailsync.fakes.tls import FakeTLS, ensure_tls
from tests.support.waiting import eventually

GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
_numbers = itertools.count()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> FakeTLS:
    return ensure_tls(Path(tmp_path_factory.mktemp("admin-client-tls")))


@pytest.fixture(scope="module")
def gmail_admin(tls: FakeTLS) -> Iterator[GmailAdmin]:
    with (
        serve_in_thread(gmail.create_app(seed_messages=6, seed=1), tls) as base,
        GmailAdmin(base, tls.ca_path) as admin,
    ):
        yield admin


@pytest.fixture(scope="module")
def microsoft_admin(tls: FakeTLS) -> Iterator[MicrosoftAdmin]:
    with (
        serve_in_thread(microsoft.create_app(seed_messages=6, seed=1), tls) as base,
        MicrosoftAdmin(base, tls.ca_path) as admin,
    ):
        yield admin


def address(domain: str = "example.com") -> str:
    return f"admin-{next(_numbers)}-{uuid.uuid4().hex[:6]}@{domain}"


def gmail_token(admin: GmailAdmin, account: GmailAccount) -> str:
    form = {"grant_type": "refresh_token", **account.provider_credentials()}
    response = admin.http.post("/token", data=form)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def profile(admin: GmailAdmin, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return admin.http.get("/gmail/v1/users/me/profile", headers=headers)


def graph_token(admin: MicrosoftAdmin, account: MicrosoftAccount) -> str:
    creds = account.credentials
    form = {
        "grant_type": "client_credentials",
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        "scope": GRAPH_SCOPE,
    }
    response = admin.http.post(f"/{creds.tenant_id}/oauth2/v2.0/token", data=form)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


# --- Gmail ---------------------------------------------------------------------------------


def test_gmail_accounts_are_typed_losslessly_and_open_the_mailbox(gmail_admin: GmailAdmin) -> None:
    """create_mailbox's account carries exactly the fake's JSON (nothing dropped: the models
    forbid unknown fields), says whether it was created, and its provider_credentials() get a
    token that reads the mailbox; revoke() hands out credentials that work where the old fail."""
    box = address()
    account = gmail_admin.create_mailbox(box, messages=3)
    again = gmail_admin.create_mailbox(box, messages=9)
    raw = gmail_admin.http.post("/_admin/mailboxes", json={"address": box}).json()
    assert (account.created, again.created) == (True, False)
    assert account.model_dump(by_alias=True, exclude={"created"}) == raw
    assert account.provider_credentials() == raw["credentials"]
    assert len(gmail_admin.ids(box)) == 3
    assert profile(gmail_admin, gmail_token(gmail_admin, account)).json()["emailAddress"] == box

    rotated = gmail_admin.revoke(box)
    assert rotated.credentials.refresh_token != account.credentials.refresh_token
    with pytest.raises(httpx.HTTPStatusError):
        gmail_token(gmail_admin, account)
    assert profile(gmail_admin, gmail_token(gmail_admin, rotated)).status_code == 200


def test_gmail_messages_labels_and_history(gmail_admin: GmailAdmin) -> None:
    """ids() is newest first and matches labels(); added messages come first; message() and
    modify_labels() report the labels as the fake holds them; a deleted message is gone and a
    second delete is AdminError 404; expire_history() moves the history id past the profile's."""
    box = address()
    account = gmail_admin.create_mailbox(box, messages=4)
    ids = gmail_admin.ids(box)
    assert list(gmail_admin.labels(box)) == ids
    added = gmail_admin.add_messages(box, 2)
    assert gmail_admin.ids(box) == added[::-1] + ids

    change = gmail_admin.modify_labels(box, ids[0], add=["Label_9"], remove=["INBOX"])
    view = gmail_admin.message(box, ids[0])
    assert "Label_9" in change.label_ids and "INBOX" not in change.label_ids
    assert view.label_ids == change.label_ids == gmail_admin.labels(box)[ids[0]]
    assert view.history_id == change.history_id and view.headers["Subject"]

    gmail_admin.delete_message(box, ids[1])
    assert ids[1] not in gmail_admin.ids(box)
    with pytest.raises(AdminError) as missing:
        gmail_admin.delete_message(box, ids[1])
    assert (missing.value.status, missing.value.detail) == (404, "no such message")
    with pytest.raises(AdminError) as nobody:
        gmail_admin.ids("nobody@example.com")
    assert nobody.value.status == 404

    token = gmail_token(gmail_admin, account)
    before = int(profile(gmail_admin, token).json()["historyId"])
    assert int(gmail_admin.expire_history(box)) > before


def test_gmail_service_account_key_works_with_google_auth(
    gmail_admin: GmailAdmin, tls: FakeTLS
) -> None:
    """service_account().info() is a key file google-auth signs JWT grants with, for any
    mailbox of the fake as the delegated subject."""
    box = address()
    gmail_admin.create_mailbox(box, messages=0)
    key = gmail_admin.service_account()
    assert key.token_uri == str(gmail_admin.http.base_url).rstrip("/") + "/token"
    creds = service_account.Credentials.from_service_account_info(
        key.info(), scopes=[GMAIL_SCOPE], subject=box
    )
    creds.refresh(google_auth_httplib2.Request(httplib2.Http(ca_certs=str(tls.ca_path))))
    assert profile(gmail_admin, creds.token).json()["emailAddress"] == box
    assert gmail_admin.service_account("named@example.iam").client_email == "named@example.iam"


def test_gmail_quota_usage_is_typed(gmail_admin: GmailAdmin) -> None:
    """set_quota() and quota() report the limit, refusal status and units charged; a call over
    the limit is refused and counted as rejected; None lifts the limit."""
    box = address()
    token = gmail_token(gmail_admin, gmail_admin.create_mailbox(box, messages=0))
    usage = gmail_admin.set_quota(box, 2, status=403)
    assert (usage.units_per_minute, usage.status, usage.charged_total) == (2, 403, 0)
    assert [profile(gmail_admin, token).status_code for _ in range(3)] == [200, 200, 403]
    usage = gmail_admin.quota(box)
    assert (usage.in_window, usage.charged_total, usage.rejected) == (2, 2, 1)
    assert usage.window_seconds == 60.0 and usage.first_charge is not None
    assert gmail_admin.set_quota(box, None).units_per_minute is None
    assert profile(gmail_admin, token).status_code == 200


# --- both fakes ------------------------------------------------------------------------------


def test_counters_and_per_operation_faults(gmail_admin: GmailAdmin) -> None:
    """stats() counts calls per operation; fail() lets `after` calls through, then fails
    `count` with the status and Retry-After; reset_stats() zeroes counts and drops faults;
    expire_tokens() makes issued tokens answer 401."""
    token = gmail_token(gmail_admin, gmail_admin.create_mailbox(address(), messages=0))
    gmail_admin.reset_stats()
    gmail_admin.fail("profile", 503, retry_after=4, after=1)
    answers = [profile(gmail_admin, token) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 503, 200]
    assert answers[1].headers["Retry-After"] == "4"
    assert gmail_admin.stats() == {"profile": 3}
    gmail_admin.fail("profile", 429)
    gmail_admin.reset_stats()
    assert gmail_admin.stats() == {}
    assert profile(gmail_admin, token).status_code == 200
    assert gmail_admin.expire_tokens() >= 1
    assert profile(gmail_admin, token).status_code == 401


def test_hold_keeps_calls_waiting_until_release(gmail_admin: GmailAdmin) -> None:
    """A call of a held mailbox has been drawn (fault_stats counts it) yet is unanswered until
    release(), which reports the plan it cleared; a second release() clears nothing."""
    box = address()
    token = gmail_token(gmail_admin, gmail_admin.create_mailbox(box, messages=0))
    gmail_admin.hold(box)
    answers: list[int] = []
    call = threading.Thread(target=lambda: answers.append(profile(gmail_admin, token).status_code))
    call.start()
    eventually(lambda: gmail_admin.fault_stats(box).calls == 1, "the held call arrives")
    assert call.is_alive() and answers == []
    stats = gmail_admin.fault_stats(box)
    assert stats.plan is not None and stats.plan.hold and stats.injected == 0
    assert gmail_admin.release(box) is True
    call.join(10)
    assert answers == [200]
    assert gmail_admin.release(box) is False
    assert gmail_admin.fault_stats(box).plan is None


def test_fault_plans_and_slow_down(gmail_admin: GmailAdmin) -> None:
    """set_faults() arms a FaultPlan as given (fields left unset keep the fake's defaults) and
    fault_stats() reads it back with its counters; slow_down() arms a plan that fails nothing."""
    box = address()
    token = gmail_token(gmail_admin, gmail_admin.create_mailbox(box, messages=0))
    gmail_admin.set_faults(box, FaultPlan(share=1.0, statuses=[503], retry_after=None))
    assert profile(gmail_admin, token).status_code == 503
    stats = gmail_admin.fault_stats(box)
    assert stats.plan == FaultPlan(share=1.0, statuses=[503], retry_after=None)
    assert (stats.calls, stats.injected) == (1, 1)
    gmail_admin.slow_down(box, 1)
    assert profile(gmail_admin, token).status_code == 200
    slowed = gmail_admin.fault_stats(box).plan
    assert slowed is not None and (slowed.slow_ms, slowed.share) == (1, 0.0)
    with pytest.raises(AdminError) as nobody:
        gmail_admin.hold("nobody@example.com")
    assert nobody.value.status == 404


def test_admin_client_picks_by_provider_and_leaves_a_given_client_open(
    gmail_admin: GmailAdmin, microsoft_admin: MicrosoftAdmin
) -> None:
    """admin_client("gmail" | "microsoft") builds that fake's client; one over a caller's
    httpx.Client uses it as is and leaves it open on close; an unknown provider is refused."""
    shared = gmail_admin.http
    with admin_client("gmail", str(shared.base_url), http=shared) as wrapped:
        assert isinstance(wrapped, GmailAdmin)
        assert wrapped.stats() == gmail_admin.stats()
    assert not shared.is_closed
    ms = admin_client("microsoft", str(microsoft_admin.http.base_url), http=microsoft_admin.http)
    assert isinstance(ms, MicrosoftAdmin)
    with pytest.raises(ValueError):
        admin_client("imap", "https://127.0.0.1:1")


# --- Microsoft -----------------------------------------------------------------------------


def test_microsoft_accounts_are_typed_losslessly(microsoft_admin: MicrosoftAdmin) -> None:
    """The account carries the fake's JSON exactly (app and delegated credentials), both
    provider_credentials() kinds are what the fake handed out, and a mailbox that exists in
    another tenant is AdminError 409."""
    box = address("contoso.example")
    account = microsoft_admin.create_mailbox(box, messages=2)
    raw = microsoft_admin.http.post("/_admin/mailboxes", json={"address": box}).json()
    assert account.created and account.model_dump(exclude={"created"}) == raw
    assert account.provider_credentials() == raw["credentials"]
    assert account.provider_credentials("delegated") == raw["delegated"]
    assert graph_token(microsoft_admin, account)
    with pytest.raises(AdminError) as conflict:
        microsoft_admin.create_mailbox(box, tenant_id=str(uuid.uuid4()))
    assert conflict.value.status == 409


def test_microsoft_messages_and_folders(microsoft_admin: MicrosoftAdmin) -> None:
    """ids() and placement() agree (by folder too); added messages land in the named folder;
    update_message() moves and edits; create_folder() shows up in folders() with its total;
    delete_message() removes; expire_delta() bumps the epoch."""
    box = address("contoso.example")
    microsoft_admin.create_mailbox(box, messages=4, spread=True)
    folders = {f.key: f for f in microsoft_admin.folders(box)}
    placement = microsoft_admin.placement(box)
    assert set(placement) == set(microsoft_admin.ids(box))
    assert set(placement.values()) <= {f.id for f in folders.values()}
    assert folders["inbox"].well_known and not folders["projects"].well_known

    made = microsoft_admin.create_folder(box, "Q4", parent="projects")
    assert (made.key, made.parent_key) == ("projects/q4", "projects")
    added = microsoft_admin.add_messages(box, 2, folder=made.key)
    assert set(microsoft_admin.ids(box, folder=made.key)) == set(added)
    assert {f.key: f.total for f in microsoft_admin.folders(box)}["projects/q4"] == 2

    change = microsoft_admin.update_message(box, added[0], subject="Moved", folder="archive")
    assert (change.id, change.folder, change.subject) == (added[0], "archive", "Moved")
    assert microsoft_admin.placement(box)[added[0]] == folders["archive"].id
    microsoft_admin.delete_message(box, added[1])
    assert added[1] not in microsoft_admin.ids(box)
    epoch = microsoft_admin.expire_delta(box)
    assert microsoft_admin.expire_delta(box) == epoch + 1


def test_microsoft_limits_and_request_log(microsoft_admin: MicrosoftAdmin) -> None:
    """requests() logs each Graph call of the mailbox (operation, path, query, Prefer) and
    concurrency() its peak; reset_limits() forgets both."""
    box = address("contoso.example")
    account = microsoft_admin.create_mailbox(box, messages=1)
    token = graph_token(microsoft_admin, account)
    path = f"/v1.0/users/{box}/mailFolders/inbox/messages/delta"
    headers = {"Authorization": f"Bearer {token}", "Prefer": "odata.maxpagesize=5"}
    response = microsoft_admin.http.get(path, params={"$select": "subject"}, headers=headers)
    assert response.status_code == 200
    [request] = microsoft_admin.requests(box)
    assert (request.operation, request.path) == ("delta", path)
    assert (request.query, request.prefer) == ({"$select": "subject"}, ["odata.maxpagesize=5"])
    usage = microsoft_admin.concurrency(box)
    assert (usage.limit, usage.in_flight, usage.peak, usage.rejected) == (4, 0, 1, 0)
    microsoft_admin.reset_limits(box)
    assert microsoft_admin.requests(box) == []
    assert microsoft_admin.concurrency(box).peak == 0
