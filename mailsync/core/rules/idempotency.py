"""Idempotency-Key of POST /v1/email/sync: a retried or concurrent trigger replays, not re-syncs."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import col, select

from mailsync.core.jobs import store as jobstore
from mailsync.db import session_scope
from mailsync.db.tables import IdempotencyRecord, SyncJob, Workspace, as_utc, utcnow
from mailsync.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey

log = logging.getLogger(__name__)

# The textual form of RFC 9562: 8-4-4-4-12 hexadecimal digits, any case, nothing around it.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ECHO_LIMIT = 40
# How many expired records one `begin` removes on the side, so no request pays for a backlog.
PURGE_BATCH = 100
# A request that claimed a key and then died leaves a pending record; after this long no live
# request can still own it (requests time out far sooner), so the key is claimed afresh.
ORPHAN_AFTER_SECONDS = 120


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: dict[str, Any]
    job_id: str | None


def parse_key(raw: str) -> str:
    """The key in canonical form (lower-case, hyphenated); InvalidIdempotencyKey otherwise."""
    # fullmatch, not `^...$`: `$` would let a trailing newline through.
    if isinstance(raw, str) and _UUID.fullmatch(raw):
        return raw.lower()
    text = raw if isinstance(raw, str) else repr(raw)
    preview = "".join(c if c.isascii() and c.isprintable() else "?" for c in text[:_ECHO_LIMIT])
    if len(text) > _ECHO_LIMIT:
        preview += "..."
    raise InvalidIdempotencyKey(
        f"Idempotency-Key must be a UUID (8-4-4-4-12 hexadecimal digits), got '{preview}'"
    )


def fingerprint(body: dict[str, Any]) -> str:
    """sha256 of the normalized request as canonical JSON: equal requests, equal fingerprints."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def begin(
    database_url: str,
    workspace_id: str,
    key: str,
    request_hash: str,
    *,
    ttl_seconds: int,
    now: Callable[[], datetime] = utcnow,
    wait_seconds: float = 10.0,
    poll_seconds: float = 0.05,
    job_id: str | None = None,
) -> Replay | None:
    """Claim the key (None: the caller owns it and must `complete` or `abandon` it) or replay.

    `job_id` is the job the caller will record if it owns the key: the record names it from
    the claim on, so a request that takes over the key of one that died after recording its
    job replays that job (its run may be syncing it) instead of starting a second one.

    The unique constraint (workspace_id, key) decides the owner: everyone inserts, the losers
    read the winner's record. A completed record with the same hash is replayed; another hash
    raises IdempotencyKeyReused; a pending one is polled until it completes, is abandoned (then
    the key is claimed again) or `wait_seconds` pass (IdempotencyKeyInUse). An expired record
    is deleted and the key claimed afresh.
    """
    deadline = time.monotonic() + wait_seconds
    _purge_quietly(database_url, now)
    for attempt in itertools.count(1):
        failure = _try_insert(
            database_url, workspace_id, key, request_hash, ttl_seconds, now, job_id
        )
        if failure is None:
            return None
        # Someone holds the key: follow their record until it settles or disappears.
        while True:
            record = _read(database_url, workspace_id, key)
            if record is None:
                if not _workspace_exists(database_url, workspace_id):
                    raise failure  # the foreign key failed, not the unique constraint
                break  # abandoned or purged meanwhile: try to claim it
            if _orphaned(record, now) and _adopt(database_url, record):
                continue  # now completed with its job: replayed below
            if _expired(record, now) or _orphaned(record, now):
                _delete_record(database_url, record)
                break
            if record.request_hash != request_hash:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different request body"
                )
            if record.status_code is not None:
                return Replay(record.status_code, dict(record.response_body or {}), record.job_id)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IdempotencyKeyInUse(
                    "a request with this Idempotency-Key is still in progress; retry shortly"
                )
            time.sleep(min(poll_seconds, remaining))
        # The key changes hands under us again and again: a few tries, then as if it were held.
        if attempt >= 3 and time.monotonic() >= deadline:
            raise IdempotencyKeyInUse(
                "a request with this Idempotency-Key is still in progress; retry shortly"
            )
    raise AssertionError("unreachable")


def complete(
    database_url: str,
    workspace_id: str,
    key: str,
    status_code: int,
    body: dict[str, Any],
    job_id: str | None,
) -> None:
    """Store the owner's response for replay (only while the record is still pending)."""
    statement = (
        sa.update(IdempotencyRecord)
        .where(
            col(IdempotencyRecord.workspace_id) == workspace_id,
            col(IdempotencyRecord.key) == key,
            col(IdempotencyRecord.status_code).is_(None),
        )
        .values(status_code=status_code, response_body=body, job_id=job_id)
    )
    with session_scope(database_url) as session:
        updated = session.connection().execute(statement).rowcount
    if not updated:
        log.warning("idempotency record %s/%s was no longer pending", workspace_id, key)


def abandon(database_url: str, workspace_id: str, key: str) -> None:
    """Release the key after a failed first request, so the client may retry with it."""
    statement = sa.delete(IdempotencyRecord).where(
        col(IdempotencyRecord.workspace_id) == workspace_id,
        col(IdempotencyRecord.key) == key,
        col(IdempotencyRecord.status_code).is_(None),
    )
    with session_scope(database_url) as session:
        session.connection().execute(statement)


def purge_expired(
    database_url: str, *, now: Callable[[], datetime] = utcnow, limit: int | None = None
) -> int:
    """Delete expired records of every workspace (at most `limit`); returns how many went."""
    cutoff = _utc(now())
    expired = col(IdempotencyRecord.expires_at) <= cutoff
    # A read first: the common case (nothing expired) takes no write lock at all.
    with session_scope(database_url) as session:
        found = select(IdempotencyRecord.id).where(expired).order_by(col(IdempotencyRecord.id))
        if limit is not None:
            found = found.limit(limit)
        ids = list(session.exec(found).all())
    if not ids:
        return 0
    # SKIP LOCKED (PostgreSQL; SQLite has one writer anyway) so concurrent purges never
    # wait on, or deadlock with, each other.
    locked = (
        sa.select(col(IdempotencyRecord.id))
        .where(col(IdempotencyRecord.id).in_(ids), expired)
        .with_for_update(skip_locked=True)
    )
    statement = sa.delete(IdempotencyRecord).where(col(IdempotencyRecord.id).in_(locked))
    with session_scope(database_url) as session:
        return session.connection().execute(statement).rowcount or 0


def _utc(value: datetime) -> datetime:
    result = as_utc(value)
    assert result is not None
    return result


def _expired(record: IdempotencyRecord, now: Callable[[], datetime]) -> bool:
    return _utc(record.expires_at) <= _utc(now())


def _orphaned(record: IdempotencyRecord, now: Callable[[], datetime]) -> bool:
    """Pending far longer than any request lives: its owner died before completing it."""
    age = (_utc(now()) - _utc(record.created_at)).total_seconds()
    return record.status_code is None and age > ORPHAN_AFTER_SECONDS


def _try_insert(
    database_url: str,
    workspace_id: str,
    key: str,
    request_hash: str,
    ttl_seconds: int,
    now: Callable[[], datetime],
    job_id: str | None = None,
) -> IntegrityError | None:
    """Insert the pending record; the IntegrityError if the key (or workspace) says no."""
    created = _utc(now())
    record = IdempotencyRecord(
        workspace_id=workspace_id,
        key=key,
        request_hash=request_hash,
        created_at=created,
        expires_at=created + timedelta(seconds=ttl_seconds),
        job_id=job_id,
    )
    try:
        with session_scope(database_url) as session:
            session.add(record)
    except IntegrityError as exc:
        return exc
    return None


def _read(database_url: str, workspace_id: str, key: str) -> IdempotencyRecord | None:
    with session_scope(database_url) as session:
        return session.exec(
            select(IdempotencyRecord).where(
                IdempotencyRecord.workspace_id == workspace_id, IdempotencyRecord.key == key
            )
        ).first()


def _adopt(database_url: str, record: IdempotencyRecord) -> bool:
    """Complete an orphaned record with the job its dead owner recorded, as the 202 that
    owner would have answered; False when it recorded none (or someone settled it first)."""
    if record.job_id is None:
        return False
    with session_scope(database_url) as session:
        job = session.get(SyncJob, record.job_id)
        if job is None:
            return False
        body = {"data": jobstore.public_view(job, brief=True)}
    statement = (
        sa.update(IdempotencyRecord)
        .where(col(IdempotencyRecord.id) == record.id, col(IdempotencyRecord.status_code).is_(None))
        .values(status_code=202, response_body=body)
    )
    with session_scope(database_url) as session:
        return bool(session.connection().execute(statement).rowcount)


def _workspace_exists(database_url: str, workspace_id: str) -> bool:
    with session_scope(database_url) as session:
        return session.get(Workspace, workspace_id) is not None


def _delete_record(database_url: str, record: IdempotencyRecord) -> None:
    # By id and state: if someone already replaced or completed it, this deletes nothing.
    statement = sa.delete(IdempotencyRecord).where(
        col(IdempotencyRecord.id) == record.id,
        col(IdempotencyRecord.status_code).is_(None)
        if record.status_code is None
        else col(IdempotencyRecord.status_code) == record.status_code,
    )
    with session_scope(database_url) as session:
        session.connection().execute(statement)


def _purge_quietly(database_url: str, now: Callable[[], datetime]) -> None:
    """Opportunistic cleanup: a failure here must not fail the request that triggered it."""
    try:
        purge_expired(database_url, now=now, limit=PURGE_BATCH)
    except SQLAlchemyError:
        log.warning("purging expired idempotency records failed", exc_info=True)
