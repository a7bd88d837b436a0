"""Idempotency-Key: one owner per key, replays of the stored outcome, expiry, and real races."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select

from mailsync.core import workspaces
from mailsync.core.rules import idempotency
from mailsync.core.rules.idempotency import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    Replay,
)
from mailsync.db import session_scope
from mailsync.db.tables import IdempotencyRecord, SyncJob, as_utc, new_id, utcnow

TTL = 24 * 3600
BODY = {"job_id": "sync_01TEST", "status": "queued"}


def _new_workspace(database_url: str) -> str:
    with session_scope(database_url) as session:
        return workspaces.create_workspace(session, new_id("ws").lower().replace("_", "-")).id


@pytest.fixture
def workspace_id(database_url: str) -> str:
    return _new_workspace(database_url)


def _key() -> str:
    return str(uuid.uuid4())


def _hash(mode: str = "incremental", provider: str | None = None) -> str:
    return idempotency.fingerprint({"mode": mode, "provider": provider})


def _at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def _records(database_url: str, workspace_id: str) -> list[IdempotencyRecord]:
    with session_scope(database_url) as session:
        return list(
            session.exec(
                select(IdempotencyRecord).where(IdempotencyRecord.workspace_id == workspace_id)
            ).all()
        )


def _count_expired(database_url: str, moment: datetime) -> int:
    with session_scope(database_url) as session:
        return session.exec(
            select(func.count()).where(col(IdempotencyRecord.expires_at) <= moment)
        ).one()


def test_parse_key_accepts_uuids_in_any_case_and_canonicalises() -> None:
    """Upper- and lower-case UUIDs name the same key: the canonical form is lower-case."""
    raw = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
    assert idempotency.parse_key(raw) == raw.lower()
    assert idempotency.parse_key(raw.lower()) == raw.lower()
    fresh = str(uuid.uuid4())
    assert idempotency.parse_key(fresh) == fresh


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not-a-uuid",
        "3f2504e04f8911d39a0c0305e82c3301",  # no hyphens
        "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}",
        "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        " 3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301\n",
        "3g2504e0-4f89-11d3-9a0c-0305e82c3301",
    ],
)
def test_parse_key_rejects_anything_but_a_hyphenated_uuid(raw: str) -> None:
    """Only the 8-4-4-4-12 hexadecimal form is a key; everything else is a 400."""
    with pytest.raises(InvalidIdempotencyKey):
        idempotency.parse_key(raw)


def test_parse_key_error_does_not_echo_long_input() -> None:
    """The error message quotes at most a short, printable prefix of what the client sent."""
    with pytest.raises(InvalidIdempotencyKey) as excinfo:
        idempotency.parse_key("x" * 10_000 + "\x00\r\n")
    message = str(excinfo.value)
    assert "x" * 65 not in message
    assert len(message) < 160
    assert "\r" not in message and "\n" not in message


def test_fingerprint_is_equal_exactly_for_equal_normalized_bodies() -> None:
    """Key order and spacing do not matter; any differing value does."""
    a = idempotency.fingerprint({"mode": "incremental", "provider": None})
    b = idempotency.fingerprint({"provider": None, "mode": "incremental"})
    assert a == b
    assert len(a) == 64 and int(a, 16) >= 0
    assert a != idempotency.fingerprint({"mode": "full", "provider": None})
    assert a != idempotency.fingerprint({"mode": "incremental", "provider": "gmail"})


def test_first_begin_owns_and_completed_key_replays(database_url: str, workspace_id: str) -> None:
    """The first request owns the key; after `complete`, the same request replays the outcome."""
    key = _key()
    assert idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=TTL) is None
    [pending] = _records(database_url, workspace_id)
    assert pending.status_code is None
    idempotency.complete(database_url, workspace_id, key, 202, BODY, "sync_01TEST")
    replay = idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=TTL)
    assert replay == Replay(202, BODY, "sync_01TEST")
    assert len(_records(database_url, workspace_id)) == 1


def test_same_key_with_another_body_is_reused(database_url: str, workspace_id: str) -> None:
    """A key first used with one body refuses another, whether pending or completed."""
    key = _key()
    assert idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=TTL) is None
    with pytest.raises(IdempotencyKeyReused):
        idempotency.begin(
            database_url, workspace_id, key, _hash("full"), ttl_seconds=TTL, wait_seconds=5
        )
    idempotency.complete(database_url, workspace_id, key, 202, BODY, "sync_01TEST")
    with pytest.raises(IdempotencyKeyReused):
        idempotency.begin(database_url, workspace_id, key, _hash("full"), ttl_seconds=TTL)


def test_abandon_releases_a_pending_key_only(database_url: str, workspace_id: str) -> None:
    """After a failed first request the key can be owned again; a completed one is never lost."""
    key = _key()
    assert idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=TTL) is None
    idempotency.abandon(database_url, workspace_id, key)
    assert _records(database_url, workspace_id) == []
    # Abandoned keys are free again, even for another body.
    assert (
        idempotency.begin(database_url, workspace_id, key, _hash("full"), ttl_seconds=TTL) is None
    )
    idempotency.complete(database_url, workspace_id, key, 202, BODY, "sync_01TEST")
    idempotency.abandon(database_url, workspace_id, key)
    replay = idempotency.begin(database_url, workspace_id, key, _hash("full"), ttl_seconds=TTL)
    assert replay == Replay(202, BODY, "sync_01TEST")


def test_waiter_owns_the_key_when_the_first_request_abandons(
    database_url: str, workspace_id: str
) -> None:
    """A concurrent request that was waiting takes over a key whose first request gave up."""
    key = _key()
    assert idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=TTL) is None
    timer = threading.Timer(0.2, idempotency.abandon, args=(database_url, workspace_id, key))
    timer.start()
    try:
        outcome = idempotency.begin(
            database_url, workspace_id, key, _hash(), ttl_seconds=TTL, wait_seconds=5
        )
    finally:
        timer.join()
    assert outcome is None
    [record] = _records(database_url, workspace_id)
    assert record.status_code is None


def test_expired_record_is_replaced_by_a_fresh_owner(database_url: str, workspace_id: str) -> None:
    """Past its TTL a record, completed or pending and whatever its body, no longer binds."""
    start = utcnow() - timedelta(days=3)
    completed, pending = _key(), _key()
    for key in (completed, pending):
        assert (
            idempotency.begin(
                database_url, workspace_id, key, _hash(), ttl_seconds=TTL, now=_at(start)
            )
            is None
        )
    idempotency.complete(database_url, workspace_id, completed, 202, BODY, "sync_01TEST")
    # Just before the TTL it still replays.
    almost = start + timedelta(seconds=TTL - 1)
    assert idempotency.begin(
        database_url, workspace_id, completed, _hash(), ttl_seconds=TTL, now=_at(almost)
    ) == Replay(202, BODY, "sync_01TEST")
    later = start + timedelta(seconds=TTL)
    for key in (completed, pending):
        outcome = idempotency.begin(
            database_url,
            workspace_id,
            key,
            _hash("full"),
            ttl_seconds=TTL,
            now=_at(later),
            wait_seconds=0,  # replacing an expired record is never a wait
        )
        assert outcome is None
        [record] = [r for r in _records(database_url, workspace_id) if r.key == key]
        assert as_utc(record.created_at) == later
    assert {r.request_hash for r in _records(database_url, workspace_id)} == {_hash("full")}


def test_purge_removes_expired_records_of_every_workspace_within_the_limit(
    database_url: str, workspace_id: str
) -> None:
    """Purging deletes expired records only, across workspaces, and honours its limit."""
    other = _new_workspace(database_url)
    fresh = _key()
    idempotency.begin(database_url, workspace_id, fresh, _hash(), ttl_seconds=TTL)
    old = utcnow() - timedelta(days=2)
    for ws in (workspace_id, other):
        for _ in range(3):
            idempotency.begin(database_url, ws, _key(), _hash(), ttl_seconds=60, now=_at(old))
    moment = utcnow()
    before = _count_expired(database_url, moment)
    assert before >= 6
    assert idempotency.purge_expired(database_url, now=_at(moment), limit=2) == 2
    assert _count_expired(database_url, moment) == before - 2
    assert idempotency.purge_expired(database_url, now=_at(moment)) == before - 2
    assert _count_expired(database_url, moment) == 0
    assert [r.key for r in _records(database_url, workspace_id)] == [fresh]
    assert _records(database_url, other) == []
    assert idempotency.purge_expired(database_url, now=_at(moment)) == 0


def test_begin_purges_expired_records_opportunistically(
    database_url: str, workspace_id: str
) -> None:
    """Any request with a key cleans up a bounded batch of other workspaces' expired records."""
    other = _new_workspace(database_url)
    old = utcnow() - timedelta(days=2)
    idempotency.begin(database_url, other, _key(), _hash(), ttl_seconds=60, now=_at(old))
    assert len(_records(database_url, other)) == 1
    idempotency.begin(database_url, workspace_id, _key(), _hash(), ttl_seconds=TTL)
    assert _records(database_url, other) == []


def test_keys_are_scoped_to_the_workspace(database_url: str, workspace_id: str) -> None:
    """The same key in two workspaces is two independent keys (no replay, no reuse error)."""
    other = _new_workspace(database_url)
    key = _key()
    assert idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=TTL) is None
    idempotency.complete(database_url, workspace_id, key, 202, BODY, "sync_01TEST")
    assert idempotency.begin(database_url, other, key, _hash("full"), ttl_seconds=TTL) is None
    idempotency.abandon(database_url, other, key)
    assert idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=TTL) == Replay(
        202, BODY, "sync_01TEST"
    )


def test_concurrent_requests_with_one_key_create_one_owner_and_replay_it(
    database_url: str, workspace_id: str
) -> None:
    """20 simultaneous requests: exactly one owns the key, the 19 others wait and replay it."""
    key, request_hash, threads = _key(), _hash(), 20
    barrier = threading.Barrier(threads)

    def request(i: int) -> Any:
        barrier.wait()
        outcome = idempotency.begin(
            database_url, workspace_id, key, request_hash, ttl_seconds=TTL, wait_seconds=10
        )
        if outcome is None:
            time.sleep(0.3)  # the owner "creates the job" while the others wait
            idempotency.complete(
                database_url, workspace_id, key, 202, {**BODY, "owner": i}, f"sync_{i}"
            )
            return i
        return outcome

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(request, range(threads)))
    owners = [o for o in outcomes if isinstance(o, int)]
    replays = [o for o in outcomes if isinstance(o, Replay)]
    assert len(owners) == 1 and len(replays) == threads - 1
    [owner] = owners
    assert replays == [Replay(202, {**BODY, "owner": owner}, f"sync_{owner}")] * (threads - 1)
    assert len(_records(database_url, workspace_id)) == 1


def test_concurrent_requests_on_an_expired_key_create_one_new_owner(
    database_url: str, workspace_id: str
) -> None:
    """Racing to replace an expired record still yields exactly one owner; the rest replay it."""
    key, threads = _key(), 10
    old = utcnow() - timedelta(days=2)
    idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=60, now=_at(old))
    idempotency.complete(database_url, workspace_id, key, 202, BODY, "sync_old")
    barrier = threading.Barrier(threads)

    def request(i: int) -> Any:
        barrier.wait()
        outcome = idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=TTL)
        if outcome is None:
            time.sleep(0.2)
            idempotency.complete(database_url, workspace_id, key, 202, BODY, f"sync_{i}")
            return i
        return outcome

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(request, range(threads)))
    [owner] = [o for o in outcomes if isinstance(o, int)]
    replays = [o for o in outcomes if isinstance(o, Replay)]
    assert replays == [Replay(202, BODY, f"sync_{owner}")] * (threads - 1)


def test_pending_owner_that_never_completes_yields_in_use_after_the_wait(
    database_url: str, workspace_id: str
) -> None:
    """Waiters give up with IdempotencyKeyInUse after `wait_seconds`, not before, not forever."""
    key, wait = _key(), 0.3
    assert idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=TTL) is None

    def request(_: int) -> float:
        started = time.monotonic()
        with pytest.raises(IdempotencyKeyInUse):
            idempotency.begin(
                database_url,
                workspace_id,
                key,
                _hash(),
                ttl_seconds=TTL,
                wait_seconds=wait,
                poll_seconds=0.02,
            )
        return time.monotonic() - started

    with ThreadPoolExecutor(5) as pool:
        elapsed = list(pool.map(request, range(5)))
    assert all(wait <= e < wait + 2 for e in elapsed), elapsed
    [record] = _records(database_url, workspace_id)
    assert record.status_code is None  # the waiters left the owner's record alone


def test_begin_for_an_unknown_workspace_fails_loudly(database_url: str) -> None:
    """A missing workspace is a database error, not a key held by someone else."""
    started = time.monotonic()
    with pytest.raises(IntegrityError):
        idempotency.begin(database_url, "no-such-workspace", _key(), _hash(), ttl_seconds=TTL)
    assert time.monotonic() - started < 5


def test_pending_record_of_a_dead_request_is_claimed_afresh(
    database_url: str, workspace_id: str
) -> None:
    """A key whose first request died before completing is not blocked for the whole TTL:
    after ORPHAN_AFTER_SECONDS the next request owns it; before that it must wait."""
    start = utcnow()
    key = _key()
    assert (
        idempotency.begin(database_url, workspace_id, key, _hash(), ttl_seconds=TTL, now=_at(start))
        is None
    )
    soon = start + timedelta(seconds=idempotency.ORPHAN_AFTER_SECONDS - 1)
    with pytest.raises(IdempotencyKeyInUse):
        idempotency.begin(
            database_url, workspace_id, key, _hash(), ttl_seconds=TTL, now=_at(soon),
            wait_seconds=0,
        )  # fmt: skip
    late = start + timedelta(seconds=idempotency.ORPHAN_AFTER_SECONDS + 1)
    assert (
        idempotency.begin(
            database_url,
            workspace_id,
            key,
            _hash(),
            ttl_seconds=TTL,
            now=_at(late),
            wait_seconds=0,
        )  # fmt: skip
        is None
    )


def test_a_dead_requests_job_is_what_a_takeover_returns(
    database_url: str, workspace_id: str
) -> None:
    """The record names its job from the moment the key is claimed. When the first request
    died after recording the job (its run may be syncing it), the request that takes the
    orphaned key over gets that job, replayed as a 202, not a second job and sync; when it
    died before recording it, the key is claimed afresh."""
    start = utcnow()
    late = start + timedelta(seconds=idempotency.ORPHAN_AFTER_SECONDS + 1)
    recorded, unrecorded = _key(), _key()
    job_id = new_id("sync")
    for key, job in ((recorded, job_id), (unrecorded, new_id("sync"))):
        assert (
            idempotency.begin(
                database_url,
                workspace_id,
                key,
                _hash(),
                ttl_seconds=TTL,
                now=_at(start),
                job_id=job,
            )  # fmt: skip
            is None
        )
    with session_scope(database_url) as session:
        session.add(SyncJob(id=job_id, workspace_id=workspace_id, mode="incremental"))

    def take_over(key: str) -> idempotency.Replay | None:
        return idempotency.begin(
            database_url, workspace_id, key, _hash(), ttl_seconds=TTL, now=_at(late),
            wait_seconds=0, job_id=new_id("sync"),
        )  # fmt: skip

    replay = take_over(recorded)
    assert replay is not None and replay.status_code == 202 and replay.job_id == job_id
    assert replay.body["data"]["job_id"] == job_id and replay.body["data"]["status"] == "queued"
    assert take_over(unrecorded) is None
