"""The freshness benchmark's burst (bench/freshness.py): changes notified by the thousand, the
push jobs of every mailbox sampled as they run, every index compared with its fake's."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlmodel import Session, col, select

from bench.local_stack import LocalStack
from mailsync.db import get_engine
from mailsync.db.tables import JobStatus, Mailbox, Message, SyncJob
from mailsync.fakes.client import GmailAdmin, MicrosoftAdmin


def until(probe: Callable[[], object], timeout: float, every: float = 0.02) -> float:
    """Wait until `probe()` is truthy, checking every `every` s; TimeoutError after
    `timeout`; the seconds it took."""
    start = time.perf_counter()
    while not probe():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"not within {timeout} s")
        time.sleep(every)
    return time.perf_counter() - start


def _gmail(stack: LocalStack) -> GmailAdmin:
    return GmailAdmin(stack.fakes.gmail_url, stack.fakes.ca_path, timeout=600)


def _microsoft(stack: LocalStack) -> MicrosoftAdmin:
    return MicrosoftAdmin(stack.fakes.microsoft_url, stack.fakes.ca_path, timeout=600)


def run(
    stack: LocalStack,
    mailboxes: dict[str, list[tuple[str, str]]],
    changes: int,
    spread: float,
) -> dict[str, Any]:
    engine = get_engine(stack.settings.resolved_database_url)
    every = [(p, m, a) for p, ms in mailboxes.items() for m, a in ms]
    ids = [m for _, m, _ in every]
    peaks: dict[str, Counter[str]] = {m: Counter() for m in ids}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with Session(engine) as session:
                rows = session.exec(
                    select(SyncJob.mailbox_id, SyncJob.status).where(
                        col(SyncJob.trigger) == "push",
                        col(SyncJob.mailbox_id).in_(ids),
                        col(SyncJob.status).in_([JobStatus.queued.value, JobStatus.running.value]),
                    )
                ).all()
            now: dict[str, Counter[str]] = {m: Counter() for m in ids}
            for mailbox_id, status in rows:
                now[str(mailbox_id)][status] += 1
            for m in ids:
                for status, count in now[m].items():
                    peaks[m][status] = max(peaks[m][status], count)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with _gmail(stack) as gmail, _microsoft(stack) as microsoft:
        admins: dict[str, GmailAdmin | MicrosoftAdmin] = {"gmail": gmail, "microsoft": microsoft}
        start = time.perf_counter()
        per = max(1, changes // len(every))
        for n in range(per):
            for provider, _, address in every:
                admins[provider].add_messages(address, 1)
            # Evenly over `spread` (a minute, as the burst).
            due = start + spread * (n + 1) / per
            time.sleep(max(0.0, due - time.perf_counter()))
        added = time.perf_counter() - start
        until(lambda: not open_push_jobs(engine, ids), 300, 0.1)
        settled = time.perf_counter() - start
        done.set()
        sampler.join()
        exact = all(index_matches(engine, admins[p], m, a, p) for p, m, a in every)
        # What the fakes' pushes got from the API over the whole run (retries included).
        answers: Counter[str] = Counter(microsoft.notification_stats().statuses)
        answers.update(gmail.pubsub().stats.statuses)
    with Session(engine) as session:
        jobs = session.exec(
            select(SyncJob).where(col(SyncJob.trigger) == "push", col(SyncJob.mailbox_id).in_(ids))
        ).all()
    return {
        "changes": per * len(every),
        "mailboxes": len(every),
        "seconds adding": round(added, 1),
        "seconds to settle": round(settled, 1),
        "max running per mailbox": max(p["running"] for p in peaks.values()),
        "max queued per mailbox": max(p["queued"] for p in peaks.values()),
        "push jobs": len(jobs),
        "failed jobs": dict(Counter(j.error_code or "" for j in jobs if j.status == "failed")),
        "answers": dict(answers),
        "5xx": sum(v for k, v in answers.items() if k.startswith("5")),
        "index exact": exact,
    }


def open_push_jobs(engine: Any, ids: list[str]) -> int:
    with Session(engine) as session:
        return len(
            session.exec(
                select(SyncJob.id).where(
                    col(SyncJob.trigger) == "push",
                    col(SyncJob.mailbox_id).in_(ids),
                    col(SyncJob.status).in_([JobStatus.queued.value, JobStatus.running.value]),
                )
            ).all()
        )


def index_matches(
    engine: Any, admin: GmailAdmin | MicrosoftAdmin, mailbox_id: str, address: str, provider: str
) -> bool:
    with Session(engine) as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox is not None
        indexed = set(
            session.exec(
                select(Message.provider_message_id).where(
                    Message.mailbox_id == mailbox_id, Message.generation == mailbox.generation
                )
            ).all()
        )
    if isinstance(admin, GmailAdmin):
        return indexed == set(admin.ids(address))
    synced = set(admin.ids(address, "inbox")) | set(admin.ids(address, "sentitems"))
    return indexed == synced
