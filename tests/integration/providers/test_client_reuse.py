"""Guards what provider instances of one process share (connections, TLS contexts, a tenant's
OpenID configuration) and what they never share (tokens, failures), against the fakes over HTTPS.

Connections are counted at the fake: every request is noted with its client port, which is one
TCP connection's (and so one TLS handshake's) for as long as it is open."""

from __future__ import annotations

import json
import os
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pytest
from fastapi import FastAPI

from mailsync.fakes.client import GmailAdmin, MicrosoftAccount, MicrosoftAdmin
from mailsync.fakes.gmail import create_app as gmail_app
from mailsync.fakes.microsoft import create_app as microsoft_app
from mailsync.fakes.server import serve_in_thread
from mailsync.fakes.tls import FakeTLS, ensure_tls
from mailsync.providers import pools
from mailsync.providers.base import (
    AuthError,
    ProviderEndpoints,
    ProviderError,
    TransientProviderError,
)
from mailsync.providers.gmail import GmailProvider
from mailsync.providers.microsoft import MicrosoftProvider
from tests.support.gmail_fake import GmailFake
from tests.support.microsoft_fake import MicrosoftFake

# A client timeout for the tests whose fake holds a request until released: short enough that
# the held request times out, long enough that no other request of a loaded machine does.
HELD_TIMEOUT = 3.0


@dataclass(frozen=True)
class Seen:
    port: int
    path: str
    authorization: str | None


@dataclass
class Wire:
    """What the fake saw, in arrival order (the admin surface left out)."""

    seen: list[Seen] = field(default_factory=list)

    def mark(self) -> int:
        return len(self.seen)

    def between(self, start: int, end: int | None = None) -> list[Seen]:
        return self.seen[start:end]


class _Recorder:
    """ASGI middleware noting every request's client port, path and Authorization."""

    def __init__(self, app: Any, wire: Wire) -> None:
        self.app = app
        self.wire = wire

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/_admin"):
            headers = dict(scope["headers"])
            authorization = headers.get(b"authorization", b"").decode() or None
            self.wire.seen.append(Seen(scope["client"][1], scope["path"], authorization))
        await self.app(scope, receive, send)


def ports(seen: list[Seen], prefix: str = "/") -> set[int]:
    return {s.port for s in seen if s.path.startswith(prefix)}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> FakeTLS:
    return ensure_tls(Path(tmp_path_factory.mktemp("client-reuse-tls")))


@dataclass
class Microsoft:
    fake: MicrosoftFake
    wire: Wire
    app: FastAPI

    def mailbox(self, messages: int = 6, domain: str = "contoso.com") -> MicrosoftAccount:
        address = f"user{len(self.app.state.microsoft.mailboxes)}@{domain}"
        return self.fake.admin.create_mailbox(address, messages)

    def inbox(self, box: MicrosoftAccount) -> set[str]:
        return set(self.fake.admin.ids(box.address, folder="inbox"))

    def provider(
        self, box: MicrosoftAccount, kind: Literal["app", "delegated"] = "app", **kwargs: Any
    ) -> Any:
        # One folder: one Graph request at a time, so one connection per mailbox without reuse.
        return MicrosoftProvider(
            box.address,
            box.provider_credentials(kind),
            self.fake.endpoints,
            folders=("inbox",),
            **kwargs,
        )

    def sync(self, box: MicrosoftAccount, kind: Literal["app", "delegated"] = "app") -> set[str]:
        provider = self.provider(box, kind)
        try:
            return {r.provider_message_id for p in provider.full_sync() for r in p.upserts}
        finally:
            provider.close()

    def token_owner(self, authorization: str | None) -> str | None:
        """The mailbox a Bearer token was issued for (None: an app-only token)."""
        assert authorization and authorization.startswith("Bearer ")
        info = self.app.state.microsoft.lookup_access_token(authorization[len("Bearer ") :])
        assert info is not None, "a token the fake never issued"
        owner: str | None = info.address
        return owner


@contextmanager
def _recorded(app: FastAPI, tls: FakeTLS) -> Iterator[tuple[str, Wire]]:
    """`app` served with every request recorded; the shared pools are closed before the server
    (idle ones close by themselves after a while, and the server's shutdown would wait for
    that)."""
    wire = Wire()
    app.add_middleware(_Recorder, wire=wire)
    with serve_in_thread(app, tls) as base:
        try:
            yield base, wire
        finally:
            pools.close_all()


@pytest.fixture
def microsoft(tls: FakeTLS) -> Iterator[Microsoft]:
    """A fake of its own per test: its port keys pools of its own, so counts start at zero."""
    app = microsoft_app(seed_messages=0, seed=5)
    with _recorded(app, tls) as (base, wire), MicrosoftAdmin(base, tls.ca_path) as admin:
        endpoints = ProviderEndpoints(
            microsoft_authority_host=base,
            graph_api_url=f"{base}/v1.0",
            ca_bundle=str(tls.ca_path),
        )
        yield Microsoft(MicrosoftFake(base, admin, endpoints), wire, app)


@dataclass
class Gmail:
    fake: GmailFake
    wire: Wire
    app: FastAPI

    def provider(self, address: str, credentials: dict[str, Any], **kwargs: Any) -> Any:
        return GmailProvider(address, credentials, self.fake.endpoints, **kwargs)

    def sync(self, address: str, credentials: dict[str, Any], **kwargs: Any) -> list[str]:
        provider = self.provider(address, credentials, **kwargs)
        try:
            return [r.provider_message_id for p in provider.full_sync() for r in p.upserts]
        finally:
            provider.close()

    def token_owner(self, authorization: str | None) -> str:
        assert authorization and authorization.startswith("Bearer ")
        info = self.app.state.gmail.oauth.tokens.get(authorization[len("Bearer ") :])
        assert info is not None, "a token the fake never issued"
        owner: str = info.address
        return owner


@pytest.fixture
def gmail(tls: FakeTLS) -> Iterator[Gmail]:
    app = gmail_app(seed_messages=0, seed=5)
    with _recorded(app, tls) as (base, wire), GmailAdmin(base, tls.ca_path) as admin:
        endpoints = ProviderEndpoints(
            google_token_uri=f"{base}/token", gmail_api_url=f"{base}/", ca_bundle=str(tls.ca_path)
        )
        yield Gmail(GmailFake(base, endpoints, admin), wire, app)


# --- Microsoft -------------------------------------------------------------------------------


def test_mailboxes_of_a_tenant_share_discovery_and_connections_but_not_tokens(
    microsoft: Microsoft,
) -> None:
    """Two mailboxes of one tenant synced one after the other in one process: one OpenID
    configuration request in all, one TLS connection to Graph and one to the identity platform
    for both; yet each mailbox asks for a token of its own and its Graph requests carry that
    token only."""
    first, second = microsoft.mailbox(), microsoft.mailbox()
    microsoft.fake.reset()
    start = microsoft.wire.mark()

    for box in (first, second):
        assert microsoft.sync(box) == microsoft.inbox(box)

    seen = microsoft.wire.between(start)
    stats = microsoft.fake.stats()
    assert stats["openid-configuration"] == 1
    assert stats["token"] == 2
    assert len(ports(seen, "/v1.0/")) == 1
    assert len(ports([s for s in seen if not s.path.startswith("/v1.0/")])) == 1
    tokens = {
        box.address: {s.authorization for s in seen if f"/users/{box.address}/" in s.path}
        for box in (first, second)
    }
    assert all(tokens.values())
    assert not tokens[first.address] & tokens[second.address]


def test_delegated_tokens_stay_with_their_user(microsoft: Microsoft) -> None:
    """Two users of one tenant with delegated credentials, synced one after the other over the
    shared connections: every Graph request for a user's mailbox carries a token the identity
    platform issued for that user, never the other's."""
    first, second = microsoft.mailbox(), microsoft.mailbox()
    start = microsoft.wire.mark()

    for box in (first, second):
        assert microsoft.sync(box, "delegated") == microsoft.inbox(box)

    graph = [s for s in microsoft.wire.between(start) if s.path.startswith("/v1.0/")]
    for box in (first, second):
        mine = [s for s in graph if f"/users/{box.address}/" in s.path]
        assert mine
        assert {microsoft.token_owner(s.authorization) for s in mine} == {box.address}
    assert len(ports(graph)) == 1


def test_a_failed_discovery_is_not_kept_for_the_next_mailbox(microsoft: Microsoft) -> None:
    """A tenant discovery that failed (503) is not remembered: the next mailbox of the tenant
    asks again and syncs. Only the successful answer is kept, so a third mailbox does not ask."""
    boxes = [microsoft.mailbox() for _ in range(3)]
    microsoft.fake.reset()
    microsoft.fake.admin.fail("openid-configuration")

    failing = microsoft.provider(boxes[0])
    # msal's own 5 s pause is then handed to the caller.
    failing.throttle_retry = replace(failing.throttle_retry, max_retry_after=0.5)
    failing.transient_retry = replace(failing.transient_retry, max_retry_after=0.5)
    try:
        with pytest.raises(TransientProviderError):
            list(failing.full_sync())
    finally:
        failing.close()
    for box in boxes[1:]:
        assert microsoft.sync(box) == microsoft.inbox(box)

    assert microsoft.fake.stats()["openid-configuration"] == 2


@pytest.mark.parametrize(
    ("status", "error"), [(503, TransientProviderError), (400, AuthError)], ids=["503", "400"]
)
def test_a_refused_token_request_is_not_replayed_to_the_next_mailbox(
    microsoft: Microsoft, status: int, error: type[ProviderError]
) -> None:
    """msal remembers a failed token request (a 503 for 5 s, a 400 for a minute) under a key
    with nothing of the mailbox in it (client credentials are the tenant's app's): another
    mailbox of the tenant, synced right after, gets its own answer from the identity platform
    at its first attempt."""
    first, second = microsoft.mailbox(), microsoft.mailbox()
    microsoft.fake.reset()
    microsoft.fake.admin.fail("token", status)

    failing = microsoft.provider(first)
    failing.throttle_retry = replace(failing.throttle_retry, max_retry_after=0.5)
    failing.transient_retry = replace(failing.transient_retry, max_retry_after=0.5)
    try:
        with pytest.raises(error):
            list(failing.full_sync())
    finally:
        failing.close()
    after = microsoft.provider(second)
    # No retries: a failure replayed from msal's memory would be raised, not waited out.
    after.throttle_retry = replace(after.throttle_retry, attempts=1, max_retry_after=0)
    after.transient_retry = replace(after.transient_retry, attempts=1, max_retry_after=0)
    try:
        assert {r.provider_message_id for p in after.full_sync() for r in p.upserts} == (
            microsoft.inbox(second)
        )
    finally:
        after.close()

    assert microsoft.fake.stats()["token"] == 2


def test_graph_pool_survives_a_provider_whose_request_timed_out(microsoft: Microsoft) -> None:
    """A provider whose Graph request timed out with the answer still to come raised and was
    closed; the answer never reaches the next mailbox, which syncs exactly its own messages over
    the shared pool, and the one after it reuses that mailbox's connection."""
    stuck, second, third = microsoft.mailbox(), microsoft.mailbox(), microsoft.mailbox()
    microsoft.fake.admin.hold(stuck.address)
    provider = microsoft.provider(stuck, timeout=HELD_TIMEOUT)
    provider.transient_retry = replace(provider.transient_retry, attempts=1)
    try:
        with pytest.raises(TransientProviderError):
            list(provider.full_sync())
    finally:
        provider.close()
        microsoft.fake.admin.release(stuck.address)

    marks = [microsoft.wire.mark()]
    for box in (second, third):
        synced = microsoft.provider(box, timeout=HELD_TIMEOUT)
        try:
            ids = {r.provider_message_id for p in synced.full_sync() for r in p.upserts}
        finally:
            synced.close()
        assert ids == microsoft.inbox(box)
        marks.append(microsoft.wire.mark())

    assert ports(microsoft.wire.between(marks[1], marks[2]), "/v1.0/") <= ports(
        microsoft.wire.between(marks[0], marks[1]), "/v1.0/"
    )


# --- Gmail -----------------------------------------------------------------------------------


def test_gmail_mailboxes_share_one_connection_but_not_tokens(gmail: Gmail) -> None:
    """Two Gmail mailboxes synced one after the other in one process use one TLS connection in
    all (token endpoint and API alike), and every request of each carries a token the fake
    issued for that very mailbox."""
    boxes = [gmail.fake.mailbox(messages) for messages in (7, 4)]
    marks = [gmail.wire.mark()]

    for address, credentials in boxes:
        assert gmail.sync(address, credentials) == gmail.fake.ids(address)
        marks.append(gmail.wire.mark())

    assert len(ports(gmail.wire.between(marks[0]))) == 1
    for (address, _), start, end in zip(boxes, marks[:-1], marks[1:], strict=True):
        api = [s for s in gmail.wire.between(start, end) if s.path != "/token"]
        assert api
        assert {gmail.token_owner(s.authorization) for s in api} == {address}


def test_gmail_transport_of_a_provider_that_timed_out_is_not_reused_dirty(gmail: Gmail) -> None:
    """A provider whose request timed out with the answer still to come raised and was closed:
    its connection is dropped, not handed on, so the next mailbox (which takes the transport
    before that answer arrives) reads its own answers (its own messages and message count),
    over a new connection; the mailbox after that reuses that connection: the pool still works."""
    (stuck, stuck_creds), *rest = [gmail.fake.mailbox(n) for n in (9, 3, 2)]
    gmail.fake.admin.hold(stuck)
    start = gmail.wire.mark()
    try:
        provider = gmail.provider(stuck, stuck_creds, timeout=HELD_TIMEOUT)
        try:
            with pytest.raises(TransientProviderError):
                list(provider.full_sync())
        finally:
            provider.close()
        providers = [gmail.provider(*rest[0], timeout=HELD_TIMEOUT)]
    finally:
        gmail.fake.admin.release(stuck)  # the held answer now goes out on the stuck connection

    marks = [gmail.wire.mark()]
    for address, credentials in rest:
        synced = (
            providers.pop()
            if providers
            else gmail.provider(address, credentials, timeout=HELD_TIMEOUT)
        )
        try:
            pages = list(synced.full_sync())
        finally:
            synced.close()
        assert [r.provider_message_id for p in pages for r in p.upserts] == gmail.fake.ids(address)
        assert pages[-1].total_estimate == len(gmail.fake.ids(address))
        marks.append(gmail.wire.mark())

    stuck_ports = ports(gmail.wire.between(start, marks[0]))
    second_ports = ports(gmail.wire.between(marks[0], marks[1]))
    assert not stuck_ports & second_ports
    assert ports(gmail.wire.between(marks[1], marks[2])) == second_ports


# --- fork ------------------------------------------------------------------------------------


def _in_child(gmail: Gmail, microsoft: Microsoft, gbox: tuple[str, Any], mbox: Any) -> dict:
    result: dict[str, Any] = {"sizes": pools.sizes()}
    result["gmail"] = gmail.sync(*gbox)
    result["microsoft"] = sorted(microsoft.sync(mbox))
    return result


def test_a_forked_child_starts_with_empty_pools(gmail: Gmail, microsoft: Microsoft) -> None:
    """A child forked from a process that has synced (its pools holding live connections)
    starts with every pool empty and opens connections of its own: it never writes to a socket
    its parent holds too. The parent's pools go on serving the parent."""
    gboxes = [gmail.fake.mailbox(3) for _ in range(3)]
    mboxes = [microsoft.mailbox() for _ in range(3)]
    # Open providers keep the parent's pools from closing as idle while the child runs.
    keepers = [gmail.provider(*gboxes[0]), microsoft.provider(mboxes[0])]
    try:
        start = gmail.wire.mark(), microsoft.wire.mark()
        assert gmail.sync(*gboxes[0]) == gmail.fake.ids(gboxes[0][0])
        assert microsoft.sync(mboxes[0]) == microsoft.inbox(mboxes[0])
        parent = ports(gmail.wire.between(start[0])), ports(microsoft.wire.between(start[1]))
        assert pools.sizes() and all(pools.sizes().values())
        forked = gmail.wire.mark(), microsoft.wire.mark()

        child = _fork(lambda: _in_child(gmail, microsoft, gboxes[1], mboxes[1]))

        assert set(child["sizes"].values()) == {0}
        assert child["gmail"] == gmail.fake.ids(gboxes[1][0])
        assert set(child["microsoft"]) == microsoft.inbox(mboxes[1])
        in_child = ports(gmail.wire.between(forked[0])), ports(microsoft.wire.between(forked[1]))
        assert in_child[0] and not in_child[0] & parent[0]
        assert in_child[1] and not in_child[1] & parent[1]

        after = gmail.wire.mark(), microsoft.wire.mark()
        assert gmail.sync(*gboxes[2]) == gmail.fake.ids(gboxes[2][0])
        assert microsoft.sync(mboxes[2]) == microsoft.inbox(mboxes[2])
        assert ports(gmail.wire.between(after[0])) <= parent[0]
        assert ports(microsoft.wire.between(after[1])) <= parent[1]
    finally:
        for keeper in keepers:
            keeper.close()


def _fork(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`work()` in a forked child, its result as JSON."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running anything of pytest's
        code = 1
        try:
            os.close(reader)
            with os.fdopen(writer, "w") as out:
                json.dump(work(), out)
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as report:
        # Only so that a child stuck for good fails the test instead of hanging it.
        assert select.select([report], [], [], 300)[0], "the child never reported"
        result = json.loads(report.read() or "null")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and isinstance(result, dict)
    return result
