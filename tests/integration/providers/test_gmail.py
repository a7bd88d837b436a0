"""GmailProvider against the fake Gmail over real HTTPS, with the real Google client libraries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

import pytest

from mailsync.fakes.server import free_port
from mailsync.fakes.tls import ensure_tls
from mailsync.providers.base import (
    AuthError,
    CursorExpiredError,
    MessageRecord,
    Page,
    ProviderEndpoints,
    ProviderError,
    TransientProviderError,
)
from mailsync.providers.gmail import GmailProvider, validate_credentials
from tests.support.gmail_fake import GmailFake, serve_gmail


@dataclass
class Fake(GmailFake):
    def expected_record(self, address: str, message_id: str) -> MessageRecord:
        """The record the fake's own view of a message calls for, built independently."""
        view = self.admin.message(address, message_id)
        headers = view.headers

        def addrs(name: str) -> list[str]:
            return [a for _, a in getaddresses([headers[name]])] if name in headers else []

        return MessageRecord(
            provider_message_id=view.id,
            thread_id=view.thread_id,
            sender=headers["From"],
            to=addrs("To"),
            cc=addrs("Cc"),
            subject=headers["Subject"],
            snippet=view.snippet,
            date=datetime.fromtimestamp(int(view.internal_date) / 1000, tz=UTC),
            labels=view.label_ids,
            size=view.size_estimate,
        )


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fake]:
    tls = ensure_tls(tmp_path_factory.mktemp("gmail-provider-tls"))
    with serve_gmail(tls, Fake, seed_messages=45, seed=11) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_counters(fake: Fake) -> None:
    fake.reset()  # also drops leftover faults


def _collect(pages: Iterator[Page]) -> tuple[list[Page], dict[str, MessageRecord], list[str]]:
    pages_list = list(pages)
    upserts = {r.provider_message_id: r for p in pages_list for r in p.upserts}
    deletions = [d for p in pages_list for d in p.deletions]
    return pages_list, upserts, deletions


def _synced(fake: Fake, messages: int | None = None) -> tuple[str, GmailProvider, str]:
    """A mailbox, its provider, and the cursor after a full sync; counters reset afterwards."""
    address, creds = fake.mailbox(messages)
    provider = fake.provider(address, creds)
    cursor = list(provider.full_sync())[-1].cursor
    assert cursor is not None
    fake.reset()
    return address, provider, cursor


def test_full_sync_mirrors_the_mailbox_exactly(fake: Fake) -> None:
    """Full sync returns every message once, with every field mapped, in pages of page_size,
    fetching metadata in batches of batch_size, the cursor only on the last page."""
    address, creds = fake.mailbox()
    with fake.provider(address, creds, page_size=20, batch_size=8) as provider:
        pages, upserts, deletions = _collect(provider.full_sync())
    ids = fake.ids(address)
    assert len(ids) == 45
    assert [len(p.upserts) for p in pages] == [20, 20, 5]
    assert [r.provider_message_id for p in pages for r in p.upserts] == ids  # newest first, no dups
    assert deletions == []
    for mid in ids:
        assert upserts[mid] == fake.expected_record(address, mid)
    assert all(p.cursor is None for p in pages[:-1])
    assert pages[-1].cursor and pages[-1].cursor.isdigit()
    stats = fake.stats()
    assert stats["profile"] == 1 and stats["messages.list"] == 3 and stats["token"] == 1
    assert stats["messages.get"] == 45
    assert stats["batch"] == 3 + 3 + 1  # ceil(20/8) + ceil(20/8) + ceil(5/8)


def test_cursor_is_taken_before_listing(fake: Fake) -> None:
    """The full-sync cursor predates the listing, so a change made while listing is replayed."""
    address, creds = fake.mailbox()
    provider = fake.provider(address, creds, page_size=10)
    pages = provider.full_sync()
    first = next(pages)
    added = fake.add(address, 1)  # lands after the profile read, during the listing
    rest = list(pages)
    cursor = rest[-1].cursor
    assert cursor is not None
    listed = {r.provider_message_id for p in [first, *rest] for r in p.upserts}
    assert added[0] not in listed  # newest-first paging already passed it
    _, upserts, _ = _collect(provider.incremental_sync(cursor))
    assert set(upserts) == set(added)
    provider.close()


def test_incremental_fetches_exactly_the_added_messages(fake: Fake) -> None:
    """After adds, an increment fetches metadata for those messages only (counted at the fake)."""
    address, provider, cursor = _synced(fake)
    added = fake.add(address, 3)
    pages, upserts, deletions = _collect(provider.incremental_sync(cursor))
    assert set(upserts) == set(added) and deletions == []
    for mid in added:
        assert upserts[mid] == fake.expected_record(address, mid)
    stats = fake.stats()
    assert stats["messages.get"] == 3 and stats["batch"] == 1 and stats["history.list"] == 1
    assert "messages.list" not in stats and "profile" not in stats
    new_cursor = pages[-1].cursor
    assert new_cursor is not None and int(new_cursor) > int(cursor)

    fake.reset()
    pages, upserts, deletions = _collect(provider.incremental_sync(new_cursor))
    assert (upserts, deletions, pages[-1].cursor) == ({}, [], new_cursor)
    assert "messages.get" not in fake.stats()
    provider.close()


def test_incremental_applies_deletions_and_label_changes(fake: Fake) -> None:
    """Deleted ids come back as deletions (never fetched); relabelled messages are re-fetched
    with their new labels; a message added and deleted within the window is only a deletion."""
    address, provider, cursor = _synced(fake)
    ids = fake.ids(address)
    gone, relabelled = ids[3], ids[4]
    fake.admin.delete_message(address, gone)
    fake.admin.modify_labels(
        address, relabelled, add=["STARRED", "Label_9"], remove=["UNREAD", "INBOX"]
    )
    (flash,) = fake.add(address, 1)
    fake.admin.delete_message(address, flash)

    _, upserts, deletions = _collect(provider.incremental_sync(cursor))
    assert set(deletions) == {gone, flash}
    assert list(upserts) == [relabelled]
    record = upserts[relabelled]
    assert record == fake.expected_record(address, relabelled)
    assert {"STARRED", "Label_9"} <= set(record.labels)
    assert not {"UNREAD", "INBOX"} & set(record.labels)
    assert fake.stats()["messages.get"] == 1
    provider.close()


def test_message_deleted_between_history_and_fetch_becomes_a_deletion(fake: Fake) -> None:
    """A 404 from a batch part means the message is gone: a deletion, not an error."""
    address, provider, cursor = _synced(fake)
    ids = fake.ids(address)
    fake.admin.modify_labels(address, ids[0], add=["X"])
    fake.fault("messages.get", 404)
    _, upserts, deletions = _collect(provider.incremental_sync(cursor))
    assert upserts == {} and deletions == [ids[0]]
    provider.close()


def test_stale_history_raises_cursor_expired(fake: Fake) -> None:
    """Fact: a stale startHistoryId gives 404. A history id past retention raises
    CursorExpiredError (at once, not retried); a new full sync recovers."""
    address, provider, cursor = _synced(fake, messages=5)
    fake.admin.expire_history(address)
    with pytest.raises(CursorExpiredError):
        list(provider.incremental_sync(cursor))
    assert fake.stats()["history.list"] == 1
    with pytest.raises(CursorExpiredError):
        list(provider.incremental_sync("not-a-history-id"))
    fresh = list(provider.full_sync())[-1].cursor
    assert fresh is not None
    assert list(provider.incremental_sync(fresh))[-1].cursor == fresh
    provider.close()


def test_refused_credentials_raise_auth_error_without_secrets(fake: Fake) -> None:
    """An invalid or revoked refresh token, or a wrong client secret, is an AuthError whose
    message holds no secret."""
    address, creds = fake.mailbox(messages=2)
    for bad in (dict(creds, refresh_token="1//0revoked"), dict(creds, client_secret="wrong")):
        with fake.provider(address, bad) as provider, pytest.raises(AuthError) as info:
            list(provider.full_sync())
        for secret in (*bad.values(), creds["refresh_token"], creds["client_secret"]):
            if secret not in ("oauth", bad["client_id"]):
                assert secret not in str(info.value)

    provider = fake.provider(address, creds)
    assert len(list(provider.full_sync())[-1].upserts) == 2
    fake.admin.revoke(address)  # drops the tokens
    with pytest.raises(AuthError):
        list(provider.full_sync())
    provider.close()


def test_expired_access_token_is_refreshed_transparently(fake: Fake) -> None:
    """When the access token expires mid-life (401), the client refreshes once and carries on,
    for plain calls and batch parts alike."""
    address, provider, cursor = _synced(fake, messages=5)
    fake.admin.expire_tokens()
    added = fake.add(address, 2)
    _, upserts, _ = _collect(provider.incremental_sync(cursor))
    assert set(upserts) == set(added)
    assert fake.stats()["token"] == 1
    fake.reset()
    fake.admin.expire_tokens()
    assert len(_collect(provider.full_sync())[1]) == 7

    # A 401 on a batch part alone: the client refreshes and resends just that part.
    fake.reset()
    added = fake.add(address, 1)
    fake.fault("messages.get", 401)
    _, upserts, _ = _collect(provider.incremental_sync(cursor))
    assert set(added) <= set(upserts)
    stats = fake.stats()
    assert stats["token"] == 1 and stats["batch"] == 2
    provider.close()


def test_refreshes_inside_batches_use_the_providers_transport(
    fake: Fake, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Tokens that the client deems stale (lifetime under google-auth's refresh margin) are
    refreshed while batches serialize; that refresh must trust endpoints.ca_bundle too, not
    the bare httplib2.Http() googleapiclient would use."""
    tls = ensure_tls(tmp_path_factory.mktemp("gmail-short-token-tls"))
    with serve_gmail(tls, seed_messages=5, token_lifetime=60) as short_lived:
        address, creds = short_lived.mailbox()
        with short_lived.provider(address, creds) as provider:
            assert len(_collect(provider.full_sync())[1]) == 5
        assert short_lived.stats()["token"] >= 2


def test_rate_limited_batch_parts_are_retried_after_retry_after(fake: Fake) -> None:
    """429s on some batch parts are retried (after Retry-After) and the sync completes whole."""
    address, creds = fake.mailbox(messages=12)
    fake.fault("messages.get", 429, count=2, retry_after=1)
    provider = fake.provider(address, creds, batch_size=10)
    started = time.monotonic()
    _, upserts, _ = _collect(provider.full_sync())
    elapsed = time.monotonic() - started
    assert set(upserts) == set(fake.ids(address))
    assert fake.stats()["messages.get"] == 12 + 2
    assert elapsed >= 1.0
    provider.close()


def test_quota_403_and_5xx_parts_are_retried(fake: Fake) -> None:
    """Fact: quota refusals may come as 403 userRateLimitExceeded. Such parts, and 503 parts,
    are transient and retried with backoff."""
    address, creds = fake.mailbox(messages=4)
    fake.fault("messages.get", 403, count=1)
    fake.fault("messages.get", 503, count=1)
    provider = fake.provider(address, creds)
    assert len(_collect(provider.full_sync())[1]) == 4
    assert fake.stats()["messages.get"] == 6
    provider.close()


def test_persistent_failures_raise_transient_errors(fake: Fake) -> None:
    """A persistent 503 (call or batch part) ends in TransientProviderError after the retry
    budget; a Retry-After too long to wait out (on a part or on the whole batch) is not slept
    through but handed to the caller."""
    address, creds = fake.mailbox(messages=3)
    sleeps: list[float] = []
    provider = fake.provider(address, creds, sleep=sleeps.append)

    fake.fault("messages.list", 503, count=100)
    with pytest.raises(TransientProviderError):
        list(provider.full_sync())
    assert fake.stats()["messages.list"] == provider.call_retry.attempts
    fake.reset()

    fake.fault("messages.get", 503, count=100)
    with pytest.raises(TransientProviderError):
        list(provider.full_sync())
    assert fake.stats()["messages.get"] == 3 * provider.part_retry.attempts
    fake.reset()

    fake.fault("messages.get", 429, count=100, retry_after=120)
    sleeps.clear()
    with pytest.raises(TransientProviderError) as info:
        list(provider.full_sync())
    assert info.value.retry_after == 120
    assert sleeps == []
    fake.reset()

    fake.fault("batch", 429, retry_after=120)
    with pytest.raises(TransientProviderError) as info:
        list(provider.full_sync())
    assert info.value.retry_after == 120
    assert sleeps == []
    provider.close()


def test_unreachable_service_is_transient(fake: Fake) -> None:
    """Nothing listening (connection refused) is a TransientProviderError, chained to its cause."""
    _, creds = fake.mailbox(messages=0)
    dead = f"https://127.0.0.1:{free_port()}"
    endpoints = ProviderEndpoints(f"{dead}/token", f"{dead}/", ca_bundle=fake.endpoints.ca_bundle)
    provider = GmailProvider("a@example.com", creds, endpoints, timeout=5)
    with provider, pytest.raises(TransientProviderError) as info:
        list(provider.full_sync())
    assert isinstance(info.value.__cause__, OSError)


def test_service_account_credentials_sync_the_subject(fake: Fake) -> None:
    """Service-account credentials (domain-wide delegation) read the mailbox named by address."""
    address, _ = fake.mailbox(messages=6)
    info = fake.admin.service_account().info()
    # The info's own token_uri must not matter: the endpoints decide where tokens come from.
    info["token_uri"] = "https://oauth2.googleapis.com/token"
    creds = {"type": "service_account", "info": info}
    with fake.provider(address, creds) as provider:
        _, upserts, _ = _collect(provider.full_sync())
    assert set(upserts) == set(fake.ids(address))
    assert fake.stats()["token"] == 1

    with fake.provider("stranger@example.com", creds) as provider, pytest.raises(AuthError):
        list(provider.full_sync())


def test_trust_comes_from_the_endpoints_ca_bundle(fake: Fake) -> None:
    """Without the fake's CA in endpoints.ca_bundle the TLS handshake fails (environment CA
    variables are not consulted in its place), and that is not reported as transient."""
    address, creds = fake.mailbox(messages=1)
    endpoints = ProviderEndpoints(
        google_token_uri=fake.endpoints.google_token_uri,
        gmail_api_url=fake.endpoints.gmail_api_url,
        ca_bundle=None,
    )
    with GmailProvider(address, creds, endpoints) as provider, pytest.raises(ProviderError) as info:
        list(provider.full_sync())
    assert not isinstance(info.value, TransientProviderError)


def test_validate_credentials_normalizes_and_never_echoes_secrets() -> None:
    """Shapes are checked and normalized; error messages name fields, never values."""
    oauth = {"type": "oauth", "client_id": " id ", "client_secret": "s3cret", "refresh_token": "rt"}
    assert validate_credentials({**oauth, "extra": 1}) == {
        "type": "oauth",
        "client_id": "id",
        "client_secret": "s3cret",
        "refresh_token": "rt",
    }
    bad_inputs: list[Any] = [
        {"type": "oauth", "client_id": "id", "client_secret": "s3cret"},
        {**oauth, "refresh_token": ""},
        {"type": "service_account", "info": {"client_email": "a@b", "private_key": "s3cret"}},
        {"type": "service_account", "info": "{not json s3cret"},
        {"type": "imap", "password": "s3cret"},
        "s3cret",
    ]
    for bad in bad_inputs:
        with pytest.raises(ValueError) as info:
            validate_credentials(bad)
        assert "s3cret" not in str(info.value)
    with pytest.raises(ValueError):
        GmailProvider("a@b.c", oauth, ProviderEndpoints(), batch_size=101)
