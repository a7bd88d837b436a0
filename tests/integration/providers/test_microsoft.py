"""Guards MicrosoftProvider's sync, error and retry contract against the fake over real HTTPS."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from mailsync.fakes.microsoft import create_app
from mailsync.fakes.server import free_port, serve_in_thread
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
from mailsync.providers.microsoft import MicrosoftProvider, validate_credentials
from tests.support.microsoft_fake import MicrosoftFake, serve_microsoft


@dataclass
class Fake(MicrosoftFake):
    def fault(
        self, operation: str, status: int, count: int = 1, retry_after: int | None = None
    ) -> None:
        self.admin.fail(operation, status, count=count, retry_after=retry_after)

    def ids(self, address: str, folder: str | None = None) -> set[str]:
        return set(self.admin.ids(address, folder))

    def add(self, address: str, count: int, folder: str) -> list[str]:
        return self.admin.add_messages(address, count, folder)


@dataclass
class Mailbox:
    address: str
    credentials: dict[str, str]
    delegated: dict[str, str]


@dataclass
class Run:
    pages: list[Page] = field(default_factory=list)

    @property
    def upserts(self) -> dict[str, MessageRecord]:
        return {r.provider_message_id: r for p in self.pages for r in p.upserts}

    @property
    def deletions(self) -> set[str]:
        """Every id the pages may delete: unscoped deletions and folder removals alike."""
        return {d for p in self.pages for d in p.deletions} | {i for i, _ in self.removals}

    @property
    def removals(self) -> set[tuple[str, str]]:
        return {(r.provider_message_id, r.label) for p in self.pages for r in p.removals}

    @property
    def cursor(self) -> str:
        assert self.pages[-1].cursor is not None
        return self.pages[-1].cursor


def drain(pages: Iterable[Page]) -> Run:
    return Run(list(pages))


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fake]:
    tls = ensure_tls(Path(tmp_path_factory.mktemp("microsoft-tls")))
    with serve_microsoft(tls, Fake, seed_messages=25, seed=7) as served:
        yield served


@pytest.fixture(autouse=True)
def _fresh_counters(fake: Fake) -> None:
    fake.reset()


def new_mailbox(fake: Fake, messages: int | None = None, domain: str = "contoso.com") -> Mailbox:
    address = f"user-{uuid.uuid4().hex[:10]}@{domain}"
    account = fake.admin.create_mailbox(address, messages)
    assert account.created
    return Mailbox(
        address, account.provider_credentials(), account.provider_credentials("delegated")
    )


@pytest.fixture
def mailbox(fake: Fake) -> Mailbox:
    box = new_mailbox(fake)
    # Seeding puts a fifth of the mail in sent items: 25 messages leave it empty now and then.
    for folder in ("inbox", "sentitems"):
        if not fake.ids(box.address, folder):
            fake.add(box.address, 1, folder)
    return box


@pytest.fixture
def provider_for(fake: Fake) -> Iterator[Any]:
    made: list[MicrosoftProvider] = []

    def make(box: Mailbox, credentials: dict | None = None, **kwargs: Any) -> MicrosoftProvider:
        provider = MicrosoftProvider(
            box.address, credentials or box.credentials, fake.endpoints, **kwargs
        )
        # Retries still happen, without the production pauses.
        provider.transient_retry = replace(provider.transient_retry, backoff=0.01)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def expected_pages(count: int, page_size: int) -> int:
    return max(1, math.ceil(count / page_size))


def test_full_sync_returns_exactly_the_mailbox(fake: Fake, mailbox: Mailbox, provider_for) -> None:
    """A full sync yields every message in the synced folders exactly once, correctly labelled
    and mapped, with the cursor on the last page only and one token request for the whole run."""
    inbox, sent = fake.ids(mailbox.address, "inbox"), fake.ids(mailbox.address, "sentitems")
    assert inbox and sent

    run = drain(provider_for(mailbox).full_sync())

    assert set(run.upserts) == inbox | sent == fake.ids(mailbox.address)
    assert sum(len(p.upserts) for p in run.pages) == len(inbox | sent)
    assert not run.deletions
    assert all(p.cursor is None for p in run.pages[:-1]) and run.pages[-1].cursor
    for record in run.upserts.values():
        assert record.labels == (
            ["inbox"] if record.provider_message_id in inbox else ["sentitems"]
        )
        assert record.thread_id and record.subject and record.snippet
        assert record.sender and "@" in record.sender and record.to
        assert record.date is not None and record.date.tzinfo is not None
        assert record.date.utcoffset() == UTC.utcoffset(None)
        assert record.size is None
    sent_records = [r for r in run.upserts.values() if r.labels == ["sentitems"]]
    assert all(r.sender == mailbox.address for r in sent_records)
    stats = fake.stats()
    assert stats["delta"] == 2  # 25 messages, page size 100: one page per folder
    assert stats["token"] == 1


def test_paging_follows_next_links_at_the_requested_page_size(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """With page_size=4 every Graph page holds at most 4 messages, each page becomes one Page,
    and the provider follows nextLinks until the deltaLink: ceil(n/4) requests per folder."""
    inbox, sent = fake.ids(mailbox.address, "inbox"), fake.ids(mailbox.address, "sentitems")

    run = drain(provider_for(mailbox, page_size=4).full_sync())

    assert all(len(p.upserts) <= 4 for p in run.pages)
    pages = expected_pages(len(inbox), 4) + expected_pages(len(sent), 4)
    assert len(run.pages) == pages == fake.stats()["delta"]
    assert set(run.upserts) == inbox | sent


def test_incremental_after_adds_fetches_exactly_those(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """After new mail arrives, an incremental sync returns exactly the new messages, in the right
    folders, using one delta request per folder and no deletions."""
    provider = provider_for(mailbox)
    cursor = drain(provider.full_sync()).cursor
    new_inbox = fake.add(mailbox.address, 3, "inbox")
    new_sent = fake.add(mailbox.address, 2, "sentitems")
    fake.reset()

    run = drain(provider.incremental_sync(cursor))

    assert set(run.upserts) == set(new_inbox) | set(new_sent)
    assert all(run.upserts[i].labels == ["inbox"] for i in new_inbox)
    assert all(run.upserts[i].labels == ["sentitems"] for i in new_sent)
    assert not run.deletions
    assert fake.stats()["delta"] == 2


def test_incremental_without_changes_is_empty_and_chains(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """An incremental sync with nothing new still ends with a usable cursor, and the next
    increment from that cursor sees only what changed after it."""
    provider = provider_for(mailbox)
    first = drain(provider.incremental_sync(drain(provider.full_sync()).cursor))
    assert not first.upserts and not first.deletions

    added = fake.add(mailbox.address, 1, "inbox")
    second = drain(provider.incremental_sync(first.cursor))
    third = drain(provider.incremental_sync(second.cursor))

    assert set(second.upserts) == set(added)
    assert not third.upserts and not third.deletions


def test_deletes_and_moves_become_folder_removals(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """Deleting a message, or moving it anywhere, yields a removal scoped to the folder it left
    (never an unscoped deletion: the index drops it only if no other synced folder holds it);
    moving it between synced folders in either direction also yields an upsert with the new
    label; an edit yields an upsert with the new content."""
    provider = provider_for(mailbox)
    cursor = drain(provider.full_sync()).cursor
    inbox = sorted(fake.ids(mailbox.address, "inbox"))
    sent = sorted(fake.ids(mailbox.address, "sentitems"))
    deleted, trashed, to_sent, edited = inbox[:4]
    to_inbox = sent[0]
    fake.admin.delete_message(mailbox.address, deleted)
    fake.admin.update_message(mailbox.address, trashed, folder="deleteditems")
    fake.admin.update_message(mailbox.address, to_sent, folder="sentitems")
    fake.admin.update_message(mailbox.address, to_inbox, folder="inbox")
    fake.admin.update_message(mailbox.address, edited, subject="Edited")

    run = drain(provider.incremental_sync(cursor))

    assert not any(p.deletions for p in run.pages)
    assert run.removals == {
        (deleted, "inbox"),
        (trashed, "inbox"),
        (to_sent, "inbox"),
        (to_inbox, "sentitems"),
    }
    assert set(run.upserts) == {to_sent, to_inbox, edited}
    assert run.upserts[to_sent].labels == ["sentitems"]
    assert run.upserts[to_inbox].labels == ["inbox"]
    assert run.upserts[edited].subject == "Edited"


def test_expired_delta_token_raises_cursor_expired(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """When Graph no longer knows the sync state (410 syncStateNotFound), incremental sync raises
    CursorExpiredError so the caller falls back to a full sync, which works again."""
    provider = provider_for(mailbox)
    cursor = drain(provider.full_sync()).cursor
    fake.admin.expire_delta(mailbox.address)

    with pytest.raises(CursorExpiredError):
        drain(provider.incremental_sync(cursor))
    assert set(drain(provider.full_sync()).upserts) == fake.ids(mailbox.address)


@pytest.mark.parametrize(
    "cursor",
    [
        "not json",
        json.dumps({"version": 1, "delta_links": {"inbox": "x"}}),
        json.dumps(
            {
                "version": 1,
                "delta_links": {
                    "inbox": "https://attacker.example/v1.0/x?$deltatoken=1",
                    "sentitems": "https://attacker.example/v1.0/y?$deltatoken=1",
                },
            }
        ),
    ],
    ids=["garbage", "other-folders", "foreign-host"],
)
def test_unusable_cursor_raises_cursor_expired_without_requests(
    fake: Fake, mailbox: Mailbox, provider_for, cursor: str
) -> None:
    """A cursor that is unreadable, covers other folders, or points away from the configured
    Graph endpoint is treated as expired, and no token is sent anywhere for it."""
    with pytest.raises(CursorExpiredError):
        drain(provider_for(mailbox).incremental_sync(cursor))
    assert fake.stats().get("delta", 0) == 0


def test_bad_client_secret_raises_auth_error(fake: Fake, mailbox: Mailbox, provider_for) -> None:
    """A refused client secret (AADSTS7000215) is an AuthError, and the secret is not in it."""
    secret = "wrong-" + uuid.uuid4().hex
    credentials = {**mailbox.credentials, "client_secret": secret}

    with pytest.raises(AuthError) as caught:
        drain(provider_for(mailbox, credentials).full_sync())

    assert "invalid_client" in str(caught.value) and "AADSTS7000215" in str(caught.value)
    assert secret not in str(caught.value)
    assert fake.stats().get("delta", 0) == 0


def test_bad_refresh_token_raises_auth_error(fake: Fake, mailbox: Mailbox, provider_for) -> None:
    """An unknown refresh token (invalid_grant) is an AuthError that does not echo the token."""
    refresh_token = "0.AXoA" + uuid.uuid4().hex
    credentials = {**mailbox.delegated, "refresh_token": refresh_token}

    with pytest.raises(AuthError) as caught:
        drain(provider_for(mailbox, credentials).full_sync())

    assert "invalid_grant" in str(caught.value)
    assert refresh_token not in str(caught.value)


def test_unknown_tenant_raises_auth_error(fake: Fake, mailbox: Mailbox, provider_for) -> None:
    """A tenant the identity platform does not know fails discovery with an AuthError."""
    credentials = {**mailbox.credentials, "tenant_id": str(uuid.uuid4())}

    with pytest.raises(AuthError):
        drain(provider_for(mailbox, credentials).full_sync())


def test_delegated_refresh_token_credentials_sync(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """Delegated refresh-token credentials do full and incremental syncs of the user's own
    mailbox; msal keeps the access token, so the whole session costs one token request."""
    provider = provider_for(mailbox, mailbox.delegated)

    full = drain(provider.full_sync())
    added = fake.add(mailbox.address, 2, "inbox")
    increment = drain(provider.incremental_sync(full.cursor))

    assert set(full.upserts) == fake.ids(mailbox.address) - set(added)
    assert set(increment.upserts) == set(added)
    assert fake.stats()["token"] == 1


def test_delegated_token_cannot_read_another_mailbox(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """A user's delegated token used on a colleague's mailbox gets 403, which is an AuthError."""
    colleague = new_mailbox(fake, messages=3)
    provider = MicrosoftProvider(colleague.address, mailbox.delegated, fake.endpoints)
    try:
        with pytest.raises(AuthError) as caught:
            drain(provider.full_sync())
    finally:
        provider.close()
    assert "403" in str(caught.value)


def test_throttled_delta_is_retried_after_retry_after(
    fake: Fake, mailbox: Mailbox, provider_for, caplog: pytest.LogCaptureFixture
) -> None:
    """A 429 with Retry-After: 1 is waited out and retried in-provider; the sync completes with
    the full mailbox, the wait is honoured, and nothing secret is logged."""
    fake.fault("delta", 429, retry_after=1)
    caplog.set_level("DEBUG", logger="mailsync")

    started = time.monotonic()
    run = drain(provider_for(mailbox).full_sync())
    elapsed = time.monotonic() - started

    assert set(run.upserts) == fake.ids(mailbox.address)
    assert elapsed >= 1.0
    assert fake.stats()["delta"] == 3  # two folders, one page each, plus the throttled attempt
    assert any("throttled" in r.getMessage() for r in caplog.records)
    assert mailbox.credentials["client_secret"] not in caplog.text
    assert "Bearer" not in caplog.text


def test_long_retry_after_is_handed_to_the_caller(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """A 429 whose Retry-After exceeds what the provider waits in-process is raised at once as
    TransientProviderError carrying that Retry-After, so the scheduler can back off."""
    fake.fault("delta", 429, retry_after=120)

    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        drain(provider_for(mailbox, folders=("inbox",)).full_sync())

    assert caught.value.retry_after == 120
    assert time.monotonic() - started < 5
    assert fake.stats()["delta"] == 1


def test_throttling_that_persists_raises_transient(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """In-provider 429 retries are bounded: after throttle_retry.attempts tries the 429 is
    raised as TransientProviderError with its Retry-After."""
    provider = provider_for(mailbox, folders=("inbox",))
    provider.throttle_retry = replace(provider.throttle_retry, max_retry_after=0.5)
    fake.fault("delta", 429, count=10, retry_after=0)

    with pytest.raises(TransientProviderError) as caught:
        drain(provider.full_sync())

    assert caught.value.retry_after == 0
    assert fake.stats()["delta"] == provider.throttle_retry.attempts


def test_persistent_503_raises_transient(fake: Fake, mailbox: Mailbox, provider_for) -> None:
    """A 503 from Graph that outlasts the provider's retries (transient_retry.attempts
    attempts) is a TransientProviderError for the caller to retry later."""
    provider = provider_for(mailbox, folders=("inbox",))
    fake.fault("delta", 503, count=10)

    with pytest.raises(TransientProviderError) as caught:
        drain(provider.full_sync())

    assert "503" in str(caught.value)
    assert fake.stats()["delta"] == provider.transient_retry.attempts


def test_token_endpoint_throttling_is_retried(fake: Fake, mailbox: Mailbox, provider_for) -> None:
    """A 429 from the token endpoint is waited out like a Graph 429 (msal itself refuses an
    identical request until Retry-After has passed)."""
    fake.fault("token", 429, retry_after=1)

    run = drain(provider_for(mailbox).full_sync())

    assert set(run.upserts) == fake.ids(mailbox.address)
    assert fake.stats()["token"] == 2


def test_token_endpoint_outage_raises_transient(fake: Fake, mailbox: Mailbox, provider_for) -> None:
    """A 503 from the token endpoint is transient, not an authentication failure. msal itself
    refuses to repeat the request for 5 s (no Retry-After), so a provider that waits less hands
    it to the caller at once, with that wait."""
    provider = provider_for(mailbox)
    provider.transient_retry = replace(provider.transient_retry, max_retry_after=1.0)
    fake.fault("token", 503)

    with pytest.raises(TransientProviderError) as caught:
        drain(provider.full_sync())
    assert caught.value.retry_after == 5.0
    assert fake.stats()["token"] == 1


def test_revoked_credentials_fail_without_retrying(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """A token endpoint answering 400 invalid_grant (revoked grant) is an AuthError at once."""
    fake.fault("token", 400)

    with pytest.raises(AuthError):
        drain(provider_for(mailbox).full_sync())
    assert fake.stats()["token"] == 1


def test_rejected_access_token_is_replaced_once(fake: Fake, mailbox: Mailbox, provider_for) -> None:
    """If Graph rejects an access token msal still considers valid (expired or revoked early),
    the provider drops it, gets a new one, and carries on."""
    provider = provider_for(mailbox)
    cursor = drain(provider.full_sync()).cursor
    added = fake.add(mailbox.address, 1, "inbox")
    fake.admin.expire_tokens()
    fake.reset()

    run = drain(provider.incremental_sync(cursor))

    assert set(run.upserts) == set(added)
    assert fake.stats()["token"] == 1


def test_rejected_delegated_token_is_replaced_once(
    fake: Fake, mailbox: Mailbox, provider_for
) -> None:
    """The same recovery works for delegated credentials, through msal's refresh token."""
    provider = provider_for(mailbox, mailbox.delegated)
    cursor = drain(provider.full_sync()).cursor
    fake.admin.expire_tokens()

    run = drain(provider.incremental_sync(cursor))

    assert not run.upserts and not run.deletions
    assert fake.stats()["token"] == 2


def test_unreachable_graph_is_transient(fake: Fake, mailbox: Mailbox) -> None:
    """A connection failure to Graph is a TransientProviderError."""
    endpoints = ProviderEndpoints(
        microsoft_authority_host=fake.base,
        graph_api_url=f"https://127.0.0.1:{free_port()}/v1.0",
        ca_bundle=fake.endpoints.ca_bundle,
    )
    provider = MicrosoftProvider(mailbox.address, mailbox.credentials, endpoints)
    provider.transient_retry = replace(provider.transient_retry, backoff=0.01)
    try:
        with pytest.raises(TransientProviderError):
            drain(provider.full_sync())
    finally:
        provider.close()


def test_unreachable_identity_platform_is_transient(fake: Fake, mailbox: Mailbox) -> None:
    """A connection failure to the identity platform is a TransientProviderError."""
    endpoints = ProviderEndpoints(
        microsoft_authority_host=f"https://127.0.0.1:{free_port()}",
        graph_api_url=fake.endpoints.graph_api_url,
        ca_bundle=fake.endpoints.ca_bundle,
    )
    provider = MicrosoftProvider(mailbox.address, mailbox.credentials, endpoints)
    provider.transient_retry = replace(provider.transient_retry, backoff=0.01)
    try:
        with pytest.raises(TransientProviderError):
            drain(provider.full_sync())
    finally:
        provider.close()


def test_untrusted_certificates_are_not_transient(
    fake: Fake, mailbox: Mailbox, tmp_path: Path
) -> None:
    """A certificate the provider cannot verify, at the identity platform or at Graph, is a
    ProviderError rather than a transient failure: retrying cannot fix configuration."""
    untrusted = ProviderEndpoints(
        microsoft_authority_host=fake.base, graph_api_url=fake.endpoints.graph_api_url
    )
    provider = MicrosoftProvider(mailbox.address, mailbox.credentials, untrusted)
    try:
        with pytest.raises(ProviderError) as caught:
            drain(provider.full_sync())
        assert not isinstance(caught.value, TransientProviderError)
    finally:
        provider.close()

    other_ca = ensure_tls(tmp_path / "other-ca")
    with serve_in_thread(create_app(seed_messages=0), other_ca) as other_base:
        endpoints = ProviderEndpoints(
            microsoft_authority_host=fake.base,
            graph_api_url=f"{other_base}/v1.0",
            ca_bundle=fake.endpoints.ca_bundle,
        )
        provider = MicrosoftProvider(mailbox.address, mailbox.credentials, endpoints)
        try:
            with pytest.raises(ProviderError) as caught:
                drain(provider.full_sync())
            assert not isinstance(caught.value, TransientProviderError)
            assert "TLS" in str(caught.value)
        finally:
            provider.close()


SECRET = "s3cr3t-value-that-must-not-leak"
APP = {"type": "client_credentials", "tenant_id": "t", "client_id": "c", "client_secret": SECRET}
DELEGATED = {**APP, "type": "refresh_token", "refresh_token": SECRET}


@pytest.mark.parametrize(
    "credentials",
    [
        {"type": "oauth", "client_secret": SECRET},
        {k: v for k, v in APP.items() if k != "client_secret"},
        {**APP, "client_secret": ""},
        {**APP, "tenant_id": "a/b"},
        {**APP, "clientSecret": SECRET},
        {k: v for k, v in DELEGATED.items() if k != "refresh_token"},
        {**DELEGATED, "refresh_token": 5},
    ],
    ids=["type", "missing", "empty", "tenant-path", "unknown-field", "no-refresh", "not-str"],
)
def test_validate_credentials_rejects_bad_shapes_without_echoing(credentials: dict) -> None:
    """Malformed credentials raise ValueError whose message never contains a secret value."""
    with pytest.raises(ValueError) as caught:
        validate_credentials(credentials)
    assert SECRET not in str(caught.value)


def test_validate_credentials_normalises() -> None:
    """Valid credentials come back stripped, with only the fields the provider uses."""
    creds = {"type": "client_credentials", "tenant_id": " t.example ", "client_id": "c"}
    assert validate_credentials({**creds, "client_secret": "x\n"}) == {
        "type": "client_credentials",
        "tenant_id": "t.example",
        "client_id": "c",
        "client_secret": "x",
    }
