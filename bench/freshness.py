"""Freshness: a message added at the fake provider -> readable through the messages API.

On the default local stack (one warm worker, the API under uvicorn) with push on: the fake
Gmail's Pub/Sub push subscription and the fake Graph's subscriptions call the API, which starts
coalesced push jobs. Scenarios:

- `push gmail` / `push microsoft`: one message added to one mailbox (of 5 per provider) at a
  time; latency = from the admin call to the first 200 of GET /v1/email/messages/{id}, polled
  every 20 ms.
- `poll (300 s)`: the same with push off (a second stack): a scheduled refresh round finds the
  message. A round is started per sample (a run of the `refresh-mailboxes/refresh` deployment,
  as its schedule starts it) and its add -> readable time measured; the wait for the round is
  the schedule's, a message arriving at an even spread of phases of the 300 s interval, so a
  sample is phase + measured round (not waited for: 20 samples would take 100 minutes).
- `burst`: 1,000 changes over 10 mailboxes (5 Gmail, 5 Microsoft, 100 each) spread over a
  minute (`full`), each notified; every 50 ms the push jobs of every mailbox are counted by state.
  Reported: most running and most queued at once per mailbox, push jobs made, the answers the
  fakes got from the API (any 5xx), and whether every mailbox's index equals the fake's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
from sqlmodel import Session, col, select

from bench import harness, push_burst
from bench.local_stack import LocalStack, local_stack
from bench.push_burst import until
from mailsync.core.push import channels
from mailsync.core.search.ids import message_id
from mailsync.db import get_engine
from mailsync.db.tables import Mailbox, SyncJob, as_utc
from mailsync.devstack.processes import free_port
from mailsync.fakes.admin_types import PushSubscriptionSpec
from mailsync.fakes.client import GmailAdmin, MicrosoftAdmin

SIZES = {"tiny": 3, "small": 10, "full": 30}
BURST = {"tiny": 20, "small": 200, "full": 1_000}
SPREAD = {"tiny": 5.0, "small": 20.0, "full": 60.0}  # seconds the burst's changes span
MAILBOXES = 5
TOPIC = "projects/mailsync-bench/topics/gmail"
ACCOUNT = "gmail-push@mailsync-bench.iam.gserviceaccount.com"
POLL_INTERVAL = 300  # the default MAILSYNC_REFRESH_INTERVAL_SECONDS
# Issue 18's targets: p50 <= 2 s, p95 <= 5 s for both providers.
TARGETS = (2.0, 5.0)


def _push_env(port: int) -> dict[str, str]:
    return {
        "MAILSYNC_PUSH_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "MAILSYNC_GMAIL_PUBSUB_TOPIC": TOPIC,
        "MAILSYNC_GMAIL_PUSH_SERVICE_ACCOUNT": ACCOUNT,
    }


def _connect(stack: LocalStack, tag: str, per_provider: int) -> dict[str, list[tuple[str, str]]]:
    """Mailboxes (id, address) per provider in the bench workspace, synced once."""
    made: dict[str, list[tuple[str, str]]] = {"gmail": [], "microsoft": []}
    for provider in made:
        for n in range(per_provider):
            address = f"{tag}-{n}@{provider}.example"
            made[provider].append((stack.connect(provider, address, 20), address))
    response = httpx.post(f"{stack.api_url}/v1/email/sync", json={}, headers=stack.auth())
    job_id = response.raise_for_status().json()["data"]["job_id"]
    until(lambda: _status(stack, job_id) in ("completed", "failed"), 300)
    assert _status(stack, job_id) == "completed"
    return made


def _gmail(stack: LocalStack) -> GmailAdmin:
    return GmailAdmin(stack.fakes.gmail_url, stack.fakes.ca_path, timeout=600)


def _microsoft(stack: LocalStack) -> MicrosoftAdmin:
    return MicrosoftAdmin(stack.fakes.microsoft_url, stack.fakes.ca_path, timeout=600)


def _status(stack: LocalStack, job_id: str) -> str:
    with Session(get_engine(stack.settings.resolved_database_url)) as session:
        job = session.get(SyncJob, job_id)
        return job.status if job else "missing"


def _readable(http: httpx.Client, mailbox_id: str, provider_id: str) -> Callable[[], bool]:
    """Whether the message is readable through the messages API (its id is derived)."""
    path = f"/v1/email/messages/{message_id(mailbox_id, provider_id)}"
    return lambda: http.get(path).status_code == 200


def _freshness(
    stack: LocalStack, provider: str, mailboxes: list[tuple[str, str]], rounds: int
) -> tuple[list[float], dict[str, float]]:
    """The samples, and the median phases of their push jobs (from the job rows): added ->
    job queued (the notification and the API), queued -> started (the worker's pick-up, the
    run's start, the mailbox's turn), started -> finished (the sync, the job closed)."""
    samples: list[float] = []
    phases: dict[str, list[float]] = {"notified": [], "to turn": [], "synced": []}
    engine = get_engine(stack.settings.resolved_database_url)
    with (
        stack.admin(provider) as admin,
        httpx.Client(base_url=stack.api_url, headers=stack.auth(), timeout=30) as http,
    ):
        for n in range(rounds):
            mailbox_id, address = mailboxes[n % len(mailboxes)]
            start, wall = time.perf_counter(), time.time()
            (added,) = admin.add_messages(address, 1)
            until(_readable(http, mailbox_id, added), 120)
            samples.append(time.perf_counter() - start)
            until(_settled(engine, mailbox_id), 60)
            with Session(engine) as session:
                job = session.exec(
                    select(SyncJob)
                    .where(SyncJob.mailbox_id == mailbox_id, SyncJob.trigger == "push")
                    .order_by(col(SyncJob.queued_at).desc())
                ).first()
            if job is None:
                continue
            queued, started = as_utc(job.queued_at), as_utc(job.started_at)
            finished = as_utc(job.finished_at)
            if queued and started and finished:
                phases["notified"].append(queued.timestamp() - wall)
                phases["to turn"].append((started - queued).total_seconds())
                phases["synced"].append((finished - started).total_seconds())
    medians = {k: round(harness.percentile(v, 50), 3) for k, v in phases.items() if v}
    return samples, medians


def _settled(engine: Any, mailbox_id: str) -> Callable[[], bool]:
    return lambda: not push_burst.open_push_jobs(engine, [mailbox_id])


def _refresh_round(stack: LocalStack) -> None:
    with stack.prefect() as client:
        deployment = client.read_deployment_by_name("refresh-mailboxes/refresh")
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"workspaces": ["bench"]}
        )

        def ended() -> bool:
            state = client.read_flow_run(UUID(str(run.id))).state
            return state is not None and state.is_final()

        until(ended, 300, 0.1)


def _polling(stack: LocalStack, mailboxes: list[tuple[str, str]], rounds: int) -> list[float]:
    samples = []
    with (
        _gmail(stack) as admin,
        httpx.Client(base_url=stack.api_url, headers=stack.auth(), timeout=30) as http,
    ):
        engine = get_engine(stack.settings.resolved_database_url)
        for n in range(rounds):
            mailbox_id, address = mailboxes[n % len(mailboxes)]
            with Session(engine) as session:  # due again, as once an interval has passed
                for row in session.exec(select(Mailbox)):
                    row.last_synced_at = None
                    session.add(row)
                session.commit()
            start = time.perf_counter()
            (added,) = admin.add_messages(address, 1)
            _refresh_round(stack)
            until(_readable(http, mailbox_id, added), 60)
            phase = POLL_INTERVAL * (n + 0.5) / rounds
            samples.append(phase + time.perf_counter() - start)
    return samples


def _row(name: str, samples: list[float]) -> dict[str, Any]:
    p50, p95 = harness.percentile(samples, 50), harness.percentile(samples, 95)
    return {
        "scenario": name,
        "samples": len(samples),
        "p50 s": round(p50, 3),
        "p95 s": round(p95, 3),
        "max s": round(max(samples), 3),
    }


def run(size: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rounds, changes = SIZES[size], BURST[size]
    rows: list[dict[str, Any]] = []
    port = free_port()
    with local_stack(env=_push_env(port), api_port=port) as stack:
        with _gmail(stack) as gmail:
            gmail.put_push_subscription(
                PushSubscriptionSpec(
                    name="projects/mailsync-bench/subscriptions/gmail-push",
                    topic=TOPIC,
                    endpoint=f"{stack.api_url}/v1/push/gmail",
                    service_account=ACCOUNT,
                )
            )
        made = _connect(stack, "fresh", MAILBOXES)
        env = _push_env(port)
        pushing = stack.settings.model_copy(
            update={k.removeprefix("MAILSYNC_").lower(): v for k, v in env.items()}
        )
        counts = channels.maintain(pushing, workspaces=["bench"]).counts()
        assert counts["failed"] == 0 and counts["opened"] == 2 * MAILBOXES, counts
        harness.console.log(f"push channels open: {counts}")
        for provider in ("gmail", "microsoft"):
            samples, phases = _freshness(stack, provider, made[provider], rounds)
            row = _row(f"push {provider}", samples)
            rows.append(row | {f"p50 {k} s": v for k, v in phases.items()})
            harness.console.log(rows[-1])
        burst = push_burst.run(stack, made, changes, SPREAD[size])
        harness.console.log(burst)
    with local_stack() as stack:
        made = _connect(stack, "poll", 1)
        rows.append(_row(f"poll ({POLL_INTERVAL} s)", _polling(stack, made["gmail"], rounds)))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row.get(k) for k in columns} for row in rows], burst
