"""GET /v1/email/messages and /{id} over a known message set written through the index
functions, on SQLite (FTS5) and PostgreSQL (tsvector): results, ids, cursors, every 400."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mailsync.core import apikeys, workspaces
from mailsync.core.search import ids
from mailsync.core.sync import index
from mailsync.db import session_scope
from mailsync.db.tables import Mailbox
from mailsync.providers.base import FolderRemoval, MessageRecord
from mailsync.settings import Settings

URL = "/v1/email/messages"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@dataclass
class Box:
    workspace_id: str
    key: str
    gmail: str
    microsoft: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def record(pid: str, minutes: int, **fields: Any) -> MessageRecord:
    values: dict[str, Any] = {
        "thread_id": f"t-{pid}",
        "sender": "Someone <someone@example.com>",
        "to": ["team@acme.com"],
        "subject": f"note {pid}",
        "snippet": "",
        "date": T0 + timedelta(minutes=minutes),
        "labels": ["INBOX"],
        "size": 100,
    }
    values.update(fields)
    return MessageRecord(provider_message_id=pid, **values)


def write(settings: Settings, mailbox_id: str, records: list[MessageRecord]) -> None:
    with session_scope(settings.resolved_database_url) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox is not None
        index.upsert(session, mailbox_id, records, mailbox.generation)


def new_box(settings: Settings) -> Box:
    ws = f"ws-{secrets.token_hex(4)}"
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, ws)
        ids_ = []
        for provider in ("gmail", "microsoft"):
            mailbox = Mailbox(
                workspace_id=ws, provider=provider, address=f"me@{provider}.example",
                credentials_encrypted="-",
            )  # fmt: skip
            session.add(mailbox)
            session.flush()
            ids_.append(mailbox.id)
        key = apikeys.create_api_key(session, ws, ["read:email"])[1]
    return Box(ws, key, *ids_)


@pytest.fixture
def box(settings: Settings) -> Box:
    """A workspace with a Gmail and a Microsoft mailbox and a known message set."""
    found = new_box(settings)
    write(settings, found.gmail, [
        record("g1", 1, subject="Invoice 42 for March", sender="Ada Lovelace <Ada@Acme.com>",
               snippet="please pay by Friday", labels=["INBOX", "Label_7"]),
        record("g2", 2, subject="Lunch", snippet="the invoicing team is buying",
               to=["bob@example.com"], cc=["Carol@Example.com"], thread_id="thread-x"),
        record("g3", 3, subject="Re: Invoice 42", thread_id="thread-x", labels=["SENT"]),
    ])  # fmt: skip
    write(
        settings,
        found.microsoft,
        [
            record("m1", 4, subject="Quarterly numbers", sender="ada@acme.com", labels=["inbox"]),
            record("m2", 5, subject="Your invoice is ready", labels=["sentitems"], date=None),
        ],
    )
    return found


def subjects(client: TestClient, box: Box, **params: Any) -> list[str]:
    response = client.get(URL, params=params, headers=box.auth)
    assert response.status_code == 200, response.text
    return [m["subject"] for m in response.json()["data"]]


def live_ids(client: TestClient, box: Box) -> dict[str, str]:
    """Provider id -> API id of the Gmail mailbox's listed messages."""
    listed = client.get(URL, params={"mailbox_id": box.gmail}, headers=box.auth).json()["data"]
    return {m["provider_message_id"]: m["id"] for m in listed}


def test_full_text_and_filters_find_exactly_the_matching_messages(
    offline_client: TestClient, box: Box
) -> None:
    """q ANDs its words over subject, snippet, sender and recipients, quotes make a phrase,
    word* a prefix; each filter narrows; newest first, a message without a date last."""
    c = offline_client
    every = ["Quarterly numbers", "Re: Invoice 42", "Lunch", "Invoice 42 for March",
             "Your invoice is ready"]  # fmt: skip
    assert subjects(c, box) == every
    assert subjects(c, box, q="invoice") == ["Re: Invoice 42", "Invoice 42 for March",
                                             "Your invoice is ready"]  # fmt: skip
    assert subjects(c, box, q="invoice march") == ["Invoice 42 for March"]
    assert subjects(c, box, q='"42 for march"') == ["Invoice 42 for March"]
    assert subjects(c, box, q='"march 42"') == []
    assert subjects(c, box, q="invoic*") == ["Re: Invoice 42", "Lunch", "Invoice 42 for March",
                                             "Your invoice is ready"]  # fmt: skip
    assert subjects(c, box, q="lovelace") == ["Invoice 42 for March"]  # sender
    assert subjects(c, box, q="carol") == ["Lunch"]  # recipients
    assert subjects(c, box, q="friday") == ["Invoice 42 for March"]  # snippet
    assert subjects(c, box, **{"from": "ADA@acme.com"}) == ["Quarterly numbers",
                                                            "Invoice 42 for March"]  # fmt: skip
    assert subjects(c, box, to="carol@example.com") == ["Lunch"]  # cc counts
    assert subjects(c, box, label="label_7") == ["Invoice 42 for March"]
    assert subjects(c, box, label="sentitems") == ["Your invoice is ready"]
    assert subjects(c, box, provider="microsoft") == ["Quarterly numbers",
                                                      "Your invoice is ready"]  # fmt: skip
    gmail_only = subjects(c, box, mailbox_id=box.gmail, q="invoice")
    assert gmail_only == ["Re: Invoice 42", "Invoice 42 for March"]
    assert subjects(c, box, thread_id="thread-x") == ["Re: Invoice 42", "Lunch"]
    assert subjects(c, box, after="2026-11-01T09:02:00Z", before="2026-11-01T10:04:00+01:00") == [
        "Re: Invoice 42", "Lunch"]  # fmt: skip
    assert subjects(c, box, after="2026-11-02") == []


def test_a_message_reads_back_by_its_id_and_shows_every_field(
    offline_client: TestClient, box: Box
) -> None:
    """Each listed message has the documented fields, and GET /{id} returns the same one;
    an unknown or malformed id is 404 not_found."""
    listed = offline_client.get(URL, params={"q": "march"}, headers=box.auth).json()["data"]
    [message] = listed
    assert message == {
        "id": ids.message_id(box.gmail, "g1"), "mailbox_id": box.gmail, "provider": "gmail",
        "provider_message_id": "g1", "thread_id": "t-g1", "from": "Ada Lovelace <Ada@Acme.com>",
        "to": ["team@acme.com"], "cc": [], "subject": "Invoice 42 for March",
        "snippet": "please pay by Friday", "date": "2026-11-01T09:01:00Z",
        "labels": ["INBOX", "Label_7"], "size": 100,
    }  # fmt: skip
    one = offline_client.get(f"{URL}/{message['id']}", headers=box.auth)
    assert one.status_code == 200 and one.json() == {"data": message}
    assert "x-ratelimit-remaining" in one.headers
    for unknown in ("msg_" + "a" * 24, "nope", "msg_" + "x" * 300):
        response = offline_client.get(f"{URL}/{unknown}", headers=box.auth)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_incremental_writes_are_searchable_at_once(
    offline_client: TestClient, settings: Settings, box: Box
) -> None:
    """Adds, subject and label changes, deletes and folder removals reach the full-text index
    and the filters in the transaction that writes the rows."""
    c = offline_client
    write(settings, box.gmail, [record("g9", 9, subject="Zebra sighting")])
    assert subjects(c, box, q="zebra") == ["Zebra sighting"]
    write(settings, box.gmail, [record("g9", 9, subject="Giraffe sighting", labels=["STARRED"])])
    assert subjects(c, box, q="zebra") == []
    assert subjects(c, box, q="giraffe", label="starred") == ["Giraffe sighting"]
    with session_scope(settings.resolved_database_url) as session:
        assert index.remove(session, box.gmail, ["g9"], 0) == 1
        removals = [FolderRemoval("m1", "inbox"), FolderRemoval("m2", "inbox")]
        assert index.remove_from_folders(session, box.microsoft, removals, 0) == 1
    assert subjects(c, box, q="giraffe") == []
    assert subjects(c, box, q="quarterly") == []
    assert subjects(c, box, provider="microsoft") == ["Your invoice is ready"]


def test_a_rebuild_is_invisible_until_its_switch_and_keeps_every_id(
    offline_client: TestClient, settings: Settings, box: Box
) -> None:
    """While a full sync builds the next generation, searches show the live one only; after
    the switch they show the new one, with the same id for every message that stayed, and a
    cursor taken before the switch continues after it."""
    c = offline_client
    before = live_ids(c, box)
    first = c.get(URL, params={"mailbox_id": box.gmail, "limit": 1}, headers=box.auth).json()
    assert [m["provider_message_id"] for m in first["data"]] == ["g3"]
    with session_scope(settings.resolved_database_url) as session:
        mailbox = session.get(Mailbox, box.gmail)
        assert mailbox is not None
        mailbox.building_generation = 1
        session.add(mailbox)
        session.flush()
        rebuilt = [record("g1", 1, subject="Invoice 42 for March"), record("g2", 2),
                   record("g4", 6, subject="Brand new invoice")]  # fmt: skip
        index.upsert(session, box.gmail, rebuilt, 1, compare_to=0)
    assert subjects(c, box, q="brand") == []
    assert len(subjects(c, box, mailbox_id=box.gmail)) == 3
    with session_scope(settings.resolved_database_url) as session:
        mailbox = session.get(Mailbox, box.gmail)
        assert mailbox is not None
        index.switch(session, mailbox, 1, live=0)
    after = live_ids(c, box)
    assert set(after) == {"g1", "g2", "g4"}
    assert after["g1"] == before["g1"] and after["g2"] == before["g2"]
    assert subjects(c, box, q="brand") == ["Brand new invoice"]
    # A cursor from before the switch continues in the new generation where it stopped.
    rest = {"mailbox_id": box.gmail, "cursor": first["next_cursor"]}
    listed = c.get(URL, params=rest, headers=box.auth).json()["data"]
    assert [m["provider_message_id"] for m in listed] == ["g2", "g1"]
    one = c.get(f"{URL}/{before['g1']}", headers=box.auth)
    assert one.status_code == 200 and one.json()["data"]["provider_message_id"] == "g1"
    assert c.get(f"{URL}/{before['g3']}", headers=box.auth).status_code == 404


@pytest.mark.parametrize("search", [{}, {"q": "walk"}, {"label": "inbox"}, {"q": "wal*"}])
def test_a_cursor_walk_while_syncs_write_never_repeats_or_skips(
    offline_client: TestClient, settings: Settings, search: dict[str, str]
) -> None:
    """Paging 3 at a time while messages are added (newer, older, same instant) and others
    deleted between pages: every message that existed for the whole walk is seen exactly
    once, and no message is seen twice; listing the index or searching its words or labels
    (SQLite's full-text walk) alike."""
    walker = new_box(settings)
    same = 30  # several messages share one date: the id breaks the tie
    write(settings, walker.gmail, [record(f"s{i}", same if i % 3 == 0 else i, subject=f"s{i}",
                                          snippet="walk") for i in range(20)])  # fmt: skip
    write(settings, walker.microsoft, [record("undated", 0, date=None, subject="undated",
                                              snippet="walk")])  # fmt: skip
    doomed = {"s4", "s15"}
    stable = {f"s{i}" for i in range(20)} - doomed | {"undated"}
    seen: list[str] = []
    cursor: str | None = None
    step = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **search, **({"cursor": cursor} if cursor else {})}
        response = offline_client.get(URL, params=params, headers=walker.auth)
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [m["subject"] for m in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        step += 1
        write(settings, walker.gmail, [
            record(f"n{step}", 100 + step, subject=f"n{step}", snippet="walk"),
            record(f"o{step}", -step, subject=f"o{step}", snippet="walk"),
            record(f"e{step}", same, subject=f"e{step}", snippet="walk"),
        ])  # fmt: skip
        if step == 2:
            with session_scope(settings.resolved_database_url) as session:
                index.remove(session, walker.gmail, doomed, 0)
    assert len(seen) == len(set(seen))
    assert stable <= set(seen)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"unknown": "1"}, "unknown"),
        ({"q": '"unbalanced'}, "q"),
        ({"q": "*"}, "q"),
        ({"q": "!!!"}, "q"),
        ({"after": "yesterday"}, "after"),
        ({"before": "2026-13-01"}, "before"),
        ({"before": "0001-01-01T00:00:00+01:00"}, "before"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
        ({"provider": "yahoo"}, "provider"),
        ({"from": "x" * 600}, "from"),
        ({"from": "a\x00b"}, "from"),
        ({"label": "\x00"}, "label"),
        ({"thread_id": "t\x00"}, "thread_id"),
        ({"q": "a\x00b"}, "q"),
    ],
)
def test_bad_input_is_400_naming_the_parameter(
    offline_client: TestClient, box: Box, params: dict[str, str], param: str
) -> None:
    """Every unusable parameter is 400 invalid_request with `param` naming it, never a 500."""
    response = offline_client.get(URL, params=params, headers=box.auth)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == param, error


def test_repeated_parameters_and_foreign_cursors_are_400(
    offline_client: TestClient, settings: Settings, box: Box
) -> None:
    """A parameter given twice is refused; so is a cursor from another workspace, or from a
    listing with other filters (it would page something else)."""
    c = offline_client
    twice = c.get(f"{URL}?q=a&q=b", headers=box.auth)
    assert twice.status_code == 400 and twice.json()["error"]["param"] == "q"
    cursor = c.get(URL, params={"limit": 1}, headers=box.auth).json()["next_cursor"]
    assert cursor
    other = new_box(settings)
    write(settings, other.gmail, [record("x1", 1), record("x2", 2)])
    for who, params in ((other, {"limit": 1}), (box, {"limit": 1, "q": "invoice"})):
        response = c.get(URL, params={**params, "cursor": cursor}, headers=who.auth)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "cursor"


def _walk(client: TestClient, box: Box, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = {"limit": 4, **params, **({"cursor": cursor} if cursor else {})}
        response = client.get(URL, params=page, headers=box.auth)
        assert response.status_code == 200, response.text
        found += response.json()["data"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return found


@pytest.mark.parametrize("search", [{"q": "burst"}, {"q": "burst", "label": "inbox"}, {}])
def test_messages_of_one_second_list_in_date_then_id_order(
    offline_client: TestClient, settings: Settings, box: Box, search: dict[str, str]
) -> None:
    """Messages dated within one second (some at the same instant) page in the exact order
    date desc, id desc, none repeated or missing: SQLite's rowids order whole seconds only,
    so the full-text walk sorts the second it stops in."""
    at = T0 + timedelta(minutes=30)
    burst = [
        record(f"b{n}", 0, subject="burst", date=at + timedelta(microseconds=(n % 5) * 1000))
        for n in range(23)
    ]
    write(settings, box.gmail, burst)
    listed = [m["id"] for m in _walk(offline_client, box, **search) if m["subject"] == "burst"]
    # The API shows dates to the second: the order is checked against the written ones.
    expected = sorted(
        ((r.date, ids.message_id(box.gmail, r.provider_message_id)) for r in burst), reverse=True
    )
    assert listed == [public_id for _, public_id in expected]


def test_a_new_date_moves_a_message_in_the_listing_under_the_same_id(
    offline_client: TestClient, settings: Settings, box: Box
) -> None:
    """A message whose date changes lists once, at its new place, with the same id, in word
    searches and plain listings (on SQLite its row moves to another rowid)."""
    before = {m["subject"]: m["id"] for m in _walk(offline_client, box, q="invoice")}
    write(settings, box.gmail, [record("g1", 500, subject="Invoice 42 for March")])
    for params in ({"q": "invoice"}, {"label": "inbox"}, {}):
        listed = _walk(offline_client, box, **params)
        assert listed[0]["subject"] == "Invoice 42 for March"
        assert listed[0]["id"] == before["Invoice 42 for March"]
        assert [m["subject"] for m in listed].count("Invoice 42 for March") == 1


@pytest.mark.parametrize("search", [{"q": "invoice"}, {"label": "inbox"}, {}])
def test_a_search_never_shows_another_workspaces_messages(
    offline_client: TestClient, settings: Settings, box: Box, search: dict[str, str]
) -> None:
    """Two workspaces holding the same words and labels: each one's searches list its own
    messages only (the full-text tokens and the SQL filter both name the workspace)."""
    other = new_box(settings)
    write(settings, other.gmail, [record("x1", 7, subject="Invoice from the other side")])
    mine = {m["mailbox_id"] for m in _walk(offline_client, box, **search)}
    theirs = {m["mailbox_id"] for m in _walk(offline_client, other, **search)}
    assert mine and mine <= {box.gmail, box.microsoft}
    assert theirs == {other.gmail}
