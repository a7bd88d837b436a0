"""The fake Gmail must speak Google's wire formats, or the provider tests would prove nothing."""

from __future__ import annotations

import itertools
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from typing import Any

import google.auth.exceptions
import google_auth_httplib2
import httplib2
import httpx
import pytest
from google.oauth2 import service_account

from mailsync.fakes.client import AdminError, FaultPlan, GmailAdmin
from mailsync.fakes.gmail import create_app
from mailsync.fakes.gmail.mailbox import Mailbox
from mailsync.fakes.server import serve_in_thread
from mailsync.fakes.tls import FakeTLS, ensure_tls

SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
NOT_FOUND_BODY = {
    "error": {
        "code": 404,
        "message": "Requested entity was not found.",
        "errors": [
            {"message": "Requested entity was not found.", "domain": "global", "reason": "notFound"}
        ],
        "status": "NOT_FOUND",
    }
}


@dataclass
class Fake:
    base: str
    tls: FakeTLS
    client: httpx.Client  # the wire, for what the tests check byte by byte
    admin: GmailAdmin  # the /_admin surface, over the same client
    counter: Iterator[int] = field(default_factory=itertools.count)

    def mailbox(self, messages: int | None = None) -> tuple[str, dict[str, str]]:
        address = f"user{next(self.counter)}@example.com"  # deterministic seed data per run
        account = self.admin.create_mailbox(address, messages)
        assert account.created
        return address, account.provider_credentials()

    def token(self, creds: dict[str, str]) -> str:
        resp = self.client.post(
            "/token",
            data={"grant_type": "refresh_token", **{k: creds[k] for k in _OAUTH_KEYS}},
        )
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["access_token"]
        return token

    def get(self, path: str, token: str, **params: Any) -> httpx.Response:
        return self.client.get(
            f"/gmail/v1/users/me/{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
        )

    def stats(self) -> dict[str, int]:
        return self.admin.stats()


_OAUTH_KEYS = ("client_id", "client_secret", "refresh_token")


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fake]:
    tls = ensure_tls(tmp_path_factory.mktemp("gmail-fake-tls"))
    verify = ssl.create_default_context(cafile=str(tls.ca_path))
    with (
        serve_in_thread(create_app(seed_messages=30, seed=3), tls) as base,
        httpx.Client(base_url=base, verify=verify, trust_env=False, timeout=30) as client,
    ):
        yield Fake(base, tls, client, GmailAdmin(base, http=client))


@pytest.fixture(autouse=True)
def _reset(fake: Fake) -> None:
    fake.admin.reset_stats()


def _list_all(fake: Fake, token: str, **params: Any) -> list[str]:
    ids: list[str] = []
    page_token = None
    while True:
        body = fake.get("messages", token, pageToken=page_token, **params).json()
        ids += [m["id"] for m in body.get("messages", [])]
        page_token = body.get("nextPageToken")
        if not page_token:
            return ids


def test_mailbox_creation_is_idempotent_and_seeding_deterministic(fake: Fake) -> None:
    """Same address -> same credentials (200); same seed + address -> same messages in any app."""
    address, creds = fake.mailbox()
    again = fake.admin.create_mailbox(address)
    assert not again.created
    assert again.provider_credentials() == creds
    ids = fake.admin.ids(address)
    assert len(ids) == 30

    other_app = create_app(seed_messages=30, seed=3)
    with serve_in_thread(other_app, fake.tls) as base, GmailAdmin(base, fake.tls.ca_path) as other:
        assert other.create_mailbox(address).created
        assert other.ids(address) == ids
        view = other.message(address, ids[0])
    assert fake.admin.message(address, ids[0]) == view


def test_token_endpoint_grants_and_refuses_like_google(fake: Fake) -> None:
    """Refresh grant answers Google's token JSON; a bad refresh token is invalid_grant (400)."""
    _, creds = fake.mailbox(messages=0)
    ok = fake.client.post("/token", data={"grant_type": "refresh_token", **creds})
    assert ok.status_code == 200
    assert set(ok.json()) == {"access_token", "expires_in", "scope", "token_type"}
    assert ok.json()["token_type"] == "Bearer" and ok.json()["expires_in"] == 3599

    bad = dict(creds, refresh_token="1//0nope")
    refused = fake.client.post("/token", data={"grant_type": "refresh_token", **bad})
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    wrong_secret = dict(creds, client_secret="nope")
    assert fake.client.post("/token", data={"grant_type": "refresh_token", **wrong_secret}).json()[
        "error"
    ] == ("invalid_client")
    assert fake.stats()["token"] == 3


def test_api_refuses_missing_bad_and_expired_tokens_with_401(fake: Fake) -> None:
    """No/invalid/expired bearer -> 401 UNAUTHENTICATED in Google's shape with WWW-Authenticate."""
    _, creds = fake.mailbox(messages=1)
    token = fake.token(creds)
    assert fake.get("profile", token).status_code == 200
    for headers in ({}, {"Authorization": "Bearer ya29.unknown"}):
        resp = fake.client.get("/gmail/v1/users/me/profile", headers=headers)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["error"]["status"] == "UNAUTHENTICATED"
        assert resp.json()["error"]["errors"][0]["reason"] == "authError"
    fake.admin.expire_tokens()
    assert fake.get("profile", token).status_code == 401


def test_messages_list_pages_newest_first_without_gaps(fake: Fake) -> None:
    """Paging yields every listed message once, newest first, and survives deletions mid-way."""
    address, creds = fake.mailbox()
    token = fake.token(creds)
    all_ids = fake.admin.ids(address)
    listed = _list_all(fake, token, maxResults=7, includeSpamTrash="true")
    assert listed == all_ids

    first = fake.get("messages", token, maxResults=7, includeSpamTrash="true").json()
    assert set(first) == {"messages", "nextPageToken", "resultSizeEstimate"}
    assert set(first["messages"][0]) == {"id", "threadId"}
    # Deleting an already-listed message must not make the next page skip a survivor.
    fake.admin.delete_message(address, first["messages"][0]["id"])
    second = fake.get(
        "messages", token, maxResults=7, includeSpamTrash="true", pageToken=first["nextPageToken"]
    ).json()
    assert [m["id"] for m in second["messages"]] == all_ids[7:14]
    rest = _list_all(fake, token, maxResults=7, includeSpamTrash="true")
    assert rest == all_ids[1:]

    fake.admin.modify_labels(address, rest[0], add=["TRASH"])
    default = _list_all(fake, token, maxResults=500)
    assert rest[0] not in default  # SPAM and TRASH are left out unless asked for
    empty_address, empty_creds = fake.mailbox(messages=0)
    body = fake.get("messages", fake.token(empty_creds)).json()
    assert body == {"resultSizeEstimate": 0}  # Gmail omits `messages` when there are none


def test_messages_get_formats(fake: Fake) -> None:
    """metadata carries only the requested headers; minimal has no payload; unknown id is 404."""
    address, creds = fake.mailbox(messages=3)
    token = fake.token(creds)
    mid = fake.admin.ids(address)[0]
    resp = fake.client.get(
        f"/gmail/v1/users/{address}/messages/{mid}",
        params=[
            ("format", "metadata"),
            ("metadataHeaders", "From"),
            ("metadataHeaders", "subject"),
        ],
        headers={"Authorization": f"Bearer {token}"},
    )
    msg = resp.json()
    assert {"id", "threadId", "snippet", "historyId", "internalDate", "sizeEstimate"} <= set(msg)
    assert msg["internalDate"].isdigit() and isinstance(msg["sizeEstimate"], int)
    assert [h["name"] for h in msg["payload"]["headers"]] == ["From", "Subject"]
    minimal = fake.get(f"messages/{mid}", token, format="minimal").json()
    assert "payload" not in minimal and minimal["id"] == mid
    full = fake.get(f"messages/{mid}", token).json()
    assert full["payload"]["body"]["data"]
    missing = fake.get("messages/0000000000000000", token)
    assert missing.status_code == 404 and missing.json() == NOT_FOUND_BODY
    assert fake.get(f"messages/{mid}", token, format="bogus").status_code == 400
    other_user = fake.client.get(
        "/gmail/v1/users/someone.else@example.com/profile",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert other_user.status_code == 403


def test_history_records_changes_and_expires(fake: Fake) -> None:
    """Each change is a record with a rising id after startHistoryId; stale ids get Google's 404."""
    address, creds = fake.mailbox(messages=5)
    token = fake.token(creds)
    start = fake.get("profile", token).json()["historyId"]
    labels = fake.admin.labels(address)
    ids = list(labels)
    added = fake.admin.add_messages(address, 2)
    # Every seeded message has a label to remove; Label_9 is never seeded.
    fake.admin.modify_labels(address, ids[0], add=["Label_9"], remove=labels[ids[0]][:1])
    fake.admin.delete_message(address, ids[1])

    body = fake.get("history", token, startHistoryId=start).json()
    records = body["history"]
    kinds = [next(k for k in r if k not in ("id", "messages")) for r in records]
    assert kinds == [
        "messagesAdded",
        "messagesAdded",
        "labelsAdded",
        "labelsRemoved",
        "messagesDeleted",
    ]
    assert [r["messagesAdded"][0]["message"]["id"] for r in records[:2]] == added
    assert records[2]["labelsAdded"][0]["labelIds"] == ["Label_9"]
    record_ids = [int(r["id"]) for r in records]
    assert record_ids == sorted(record_ids) and record_ids[0] > int(start)
    assert body["historyId"] == fake.get("profile", token).json()["historyId"]

    only_deleted = fake.get("history", token, startHistoryId=start, historyTypes="messageDeleted")
    assert [r["messagesDeleted"][0]["message"]["id"] for r in only_deleted.json()["history"]] == [
        ids[1]
    ]
    paged = fake.get("history", token, startHistoryId=start, maxResults=2).json()
    assert len(paged["history"]) == 2 and paged["nextPageToken"]
    latest = body["historyId"]
    assert "history" not in fake.get("history", token, startHistoryId=latest).json()
    assert fake.get("history", token).status_code == 400

    fake.admin.expire_history(address)
    for stale in (start, latest):
        resp = fake.get("history", token, startHistoryId=stale)
        assert resp.status_code == 404 and resp.json() == NOT_FOUND_BODY
    fresh = fake.get("profile", token).json()["historyId"]
    assert fake.get("history", token, startHistoryId=fresh).status_code == 200
    assert fake.stats()["history.list"] == 8


def _batch_body(parts: list[tuple[str, str]], token: str | None) -> tuple[str, str]:
    boundary = "batch_test_boundary"
    chunks = []
    for content_id, target in parts:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        chunks.append(
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <{content_id}>\r\n\r\n"
            f"GET {target} HTTP/1.1\r\n{auth}\r\n"
        )
    return "".join(chunks) + f"--{boundary}--\r\n", f"multipart/mixed; boundary={boundary}"


def _batch_answers(resp: httpx.Response) -> dict[str, tuple[int, dict[str, str], Any]]:
    head = f"Content-Type: {resp.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser().parsebytes(head + resp.content)
    answers = {}
    parts = message.get_payload()
    assert isinstance(parts, list)
    for part in parts:
        assert isinstance(part, Message) and part["Content-Type"] == "application/http"
        text = part.get_payload()
        assert isinstance(text, str)
        status_line, rest = text.split("\r\n", 1)
        header_text, body = rest.split("\r\n\r\n", 1)
        headers = dict(line.split(": ", 1) for line in header_text.split("\r\n"))
        answers[str(part["Content-ID"])] = (
            int(status_line.split(" ")[1]),
            headers,
            json.loads(body),
        )
    return answers


def test_batch_dispatches_each_part_with_its_own_status(fake: Fake) -> None:
    """Parts are counted and fault-checked one by one: one 429 part among 200s and a 404."""
    address, creds = fake.mailbox(messages=3)
    token = fake.token(creds)
    ids = fake.admin.ids(address)
    fake.admin.fail("messages.get", 429, retry_after=2)
    parts = [
        (f"item{i}", f"/gmail/v1/users/me/messages/{mid}?format=minimal")
        for i, mid in enumerate(ids)
    ]
    parts.append(("gone", "/gmail/v1/users/me/messages/ffffffffffffffff?format=minimal"))
    body, content_type = _batch_body(parts, token)
    resp = fake.client.post("/batch/gmail/v1", content=body, headers={"Content-Type": content_type})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("multipart/mixed")
    answers = _batch_answers(resp)
    assert list(answers) == [
        "<response-item0>",
        "<response-item1>",
        "<response-item2>",
        "<response-gone>",
    ]
    status, headers, payload = answers["<response-item0>"]
    assert status == 429 and headers["Retry-After"] == "2"
    assert payload["error"]["errors"][0]["reason"] == "rateLimitExceeded"
    assert [answers[f"<response-item{i}>"][2]["id"] for i in (1, 2)] == ids[1:]
    assert answers["<response-gone>"][0] == 404
    assert fake.stats() == {"batch": 1, "messages.get": 4, "token": 1}

    unauthenticated, content_type = _batch_body(parts[:1], None)
    resp = fake.client.post(
        "/batch", content=unauthenticated, headers={"Content-Type": content_type}
    )
    assert _batch_answers(resp)["<response-item0>"][0] == 401

    too_many, content_type = _batch_body(parts[:1] * 101, token)
    resp = fake.client.post(
        "/batch/gmail/v1", content=too_many, headers={"Content-Type": content_type}
    )
    assert resp.status_code == 400 and resp.json()["error"]["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(429, "rateLimitExceeded"), (403, "userRateLimitExceeded"), (503, "backendError")],
)
def test_injected_faults_use_googles_error_shape(fake: Fake, status: int, reason: str) -> None:
    """Faults answer with Google's reason for the status, plus Retry-After when one was given."""
    _, creds = fake.mailbox(messages=1)
    token = fake.token(creds)
    fake.admin.fail("profile", status, retry_after=7)
    resp = fake.get("profile", token)
    assert resp.status_code == status and resp.headers["retry-after"] == "7"
    assert resp.json()["error"]["errors"][0]["reason"] == reason
    assert fake.get("profile", token).status_code == 200  # count=1: the next call succeeds


def test_service_account_jwt_grant_with_google_auth(fake: Fake) -> None:
    """A domain-wide-delegation JWT from google-auth yields a token for the subject, and only
    for a known mailbox."""
    address, _ = fake.mailbox(messages=2)
    info = fake.admin.service_account().info()
    assert info["type"] == "service_account" and "PRIVATE KEY" in info["private_key"]
    request = google_auth_httplib2.Request(httplib2.Http(ca_certs=str(fake.tls.ca_path)))
    creds = service_account.Credentials.from_service_account_info(
        info, scopes=[SCOPE], subject=address
    )
    creds.refresh(request)
    assert fake.get("profile", creds.token).json()["emailAddress"] == address

    stranger = creds.with_subject("nobody@example.com")
    with pytest.raises(google.auth.exceptions.RefreshError):
        stranger.refresh(request)
    forged = dict(info, client_email="forged@mailsync-fake.iam.gserviceaccount.com")
    forged_creds = service_account.Credentials.from_service_account_info(
        forged, scopes=[SCOPE], subject=address
    )
    with pytest.raises(google.auth.exceptions.RefreshError):
        forged_creds.refresh(request)


def test_quota_charges_gmail_costs_and_refuses_in_googles_shape(fake: Fake) -> None:
    """Facts: getProfile costs 1 unit, messages.list 5, history.list 2; a user over the quota
    is refused with 429 rateLimitExceeded or 403 userRateLimitExceeded (domain usageLimits)
    and a Retry-After; refused calls are not charged; the limit is per mailbox."""
    address, creds = fake.mailbox(messages=3)
    other, other_creds = fake.mailbox(messages=1)
    token = fake.token(creds)
    usage = fake.admin.set_quota(address, 12)
    assert usage.units_per_minute == 12 and usage.window_seconds == 60
    start = fake.get("profile", token).json()["historyId"]  # 1
    assert fake.get("messages", token).status_code == 200  # 6
    assert fake.get("history", token, startHistoryId=start).status_code == 200  # 8
    assert fake.get("history", token, startHistoryId=start).status_code == 200  # 10
    refused = fake.get("messages", token)  # 15 > 12
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["errors"][0]["reason"] == "rateLimitExceeded"
    assert error["errors"][0]["domain"] == "usageLimits"
    assert fake.get("history", token, startHistoryId=start).status_code == 200  # 12: fits
    fake.admin.set_quota(address, 12, status=403)
    refused = fake.get("profile", token)
    assert refused.status_code == 403 and refused.headers["retry-after"]
    assert refused.json()["error"]["errors"][0]["reason"] == "userRateLimitExceeded"
    usage = fake.admin.quota(address)
    assert (usage.charged_total, usage.in_window, usage.rejected) == (12, 12, 2)
    assert fake.get("profile", fake.token(other_creds)).status_code == 200  # another user
    with pytest.raises(AdminError) as unknown:
        fake.admin.set_quota("nobody@x.y", None)
    assert unknown.value.status == 404


def test_batch_parts_are_charged_and_throttled_one_by_one(fake: Fake) -> None:
    """Fact: every part of a batch is charged (5 units per messages.get) and throttled on its
    own: with room for 3 parts, a batch of 5 answers 3 messages and 2 refusals."""
    address, creds = fake.mailbox(messages=5)
    token = fake.token(creds)
    ids = fake.admin.ids(address)
    fake.admin.set_quota(address, 15)
    parts = [
        (f"p{i}", f"/gmail/v1/users/me/messages/{mid}?format=minimal") for i, mid in enumerate(ids)
    ]
    body, content_type = _batch_body(parts, token)
    resp = fake.client.post("/batch/gmail/v1", content=body, headers={"Content-Type": content_type})
    statuses = [status for status, _, _ in _batch_answers(resp).values()]
    assert statuses == [200, 200, 200, 429, 429]
    usage = fake.admin.quota(address)
    assert (usage.charged_total, usage.rejected) == (15, 2)


def test_fault_share_is_seeded_per_mailbox_and_covers_batch_parts(fake: Fake) -> None:
    """POST /_admin/mailboxes/{a}/faults fails `share` of that mailbox's calls (batch parts
    too) with the given statuses in Google's shape, the same sequence for the same seed, slows
    calls by slow_ms, touches no other mailbox, and DELETE clears it."""
    address, creds = fake.mailbox(messages=4)
    other, other_creds = fake.mailbox(messages=1)
    token, other_token = fake.token(creds), fake.token(other_creds)
    plan = FaultPlan(share=0.5, statuses=[429, 503], retry_after=2, seed=7)

    def statuses() -> list[int]:
        return [fake.get("profile", token).status_code for _ in range(30)]

    fake.admin.set_faults(address, plan)
    first = statuses()
    assert set(first) == {200, 429, 503} and 8 <= first.count(200) <= 22
    fake.admin.set_faults(address, plan)  # re-armed: same draws
    assert statuses() == first
    assert all(fake.get("profile", other_token).status_code == 200 for _ in range(10))

    fake.admin.set_faults(address, plan.model_copy(update={"share": 1.0}))
    refused = fake.get("profile", token)
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["errors"][0]["reason"] in {"rateLimitExceeded", "backendError"}
    ids = fake.admin.ids(address)
    body, content_type = _batch_body(
        [(mid, f"/gmail/v1/users/me/messages/{mid}") for mid in ids], token
    )
    resp = fake.client.post("/batch/gmail/v1", content=body, headers={"Content-Type": content_type})
    assert resp.status_code == 200
    assert all(status in (429, 503) for status, _, _ in _batch_answers(resp).values())
    counters = fake.admin.fault_stats(address)
    assert counters.plan is not None and counters.plan.share == 1.0
    assert counters.injected == counters.calls == 5

    fake.admin.slow_down(address, 300)
    started = time.monotonic()
    assert fake.get("profile", token).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert fake.admin.release(address) is True
    assert statuses() == [200] * 30
    with pytest.raises(AdminError) as unknown:
        fake.admin.set_faults("nobody@x.y", plan)
    assert unknown.value.status == 404


def test_a_100k_message_mailbox_is_generated_whole() -> None:
    """A 100,000-message mailbox (details derived lazily from a per-message seed) pages newest
    first through all of them, and is the same when made again. (Its speed is a benchmark's
    business, `python -m bench throughput`, not a timed assertion on a shared CI machine.)"""
    box = Mailbox.create("big@example.com", 0, 100_000)
    assert box.profile()["messagesTotal"] == 100_000
    seen: list[str] = []
    token = None
    while True:
        page = box.list_messages(500, token, [], include_spam_trash=True)
        seen += [m["id"] for m in page["messages"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert seen == [m.id for m in box.newest_first()] and len(set(seen)) == 100_000
    again = Mailbox.create("big@example.com", 0, 100_000)
    mid = seen[12_345]
    assert again.messages[mid].resource("full") == box.messages[mid].resource("full")
