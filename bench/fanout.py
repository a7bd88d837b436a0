"""Fan-out: one scheduled refresh round over many connected mailboxes with no changes.

On the default local stack (one process worker), mailboxes are spread over workspaces of 20
(half Gmail, half Microsoft, 3 messages each). A first refresh round performs their initial
syncs; then every mailbox is made due again and a second round, the one measured, finds no
changes anywhere. The round is a run of the `refresh-mailboxes/refresh` deployment, started
through Prefect exactly as its schedule starts it; the time is from its creation to its
completion, beside the flow run's own run time.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any
from uuid import UUID

from sqlmodel import Session, col, select, update

from bench import harness
from bench.local_stack import LocalStack, local_stack
from mailsync.db import get_engine
from mailsync.db.tables import Mailbox, SyncJob, utcnow

SIZES = {"tiny": 20, "small": 200, "full": 1_000}
PER_WORKSPACE = 20


def _round(stack: LocalStack) -> dict[str, float]:
    with stack.prefect() as client:
        deployment = client.read_deployment_by_name("refresh-mailboxes/refresh")
        created = time.perf_counter()
        run = client.create_flow_run_from_deployment(deployment.id)
        while True:
            state = client.read_flow_run(UUID(str(run.id)))
            if state.state is not None and state.state.is_final():
                break
            time.sleep(0.25)
        wall = time.perf_counter() - created
        assert state.state is not None and state.state.is_completed(), state.state
        return {"wall": wall, "run": state.total_run_time.total_seconds()}


def run(size: str) -> list[dict[str, Any]]:
    count = SIZES[size]
    with local_stack(env={"MAILSYNC_REFRESH_CONCURRENCY": "16"}) as stack:
        for n in range(count):
            provider = "gmail" if n % 2 == 0 else "microsoft"
            workspace = f"bench-{n // PER_WORKSPACE}"
            stack.connect(provider, f"fanout-{n}@{provider}.example", 3, workspace=workspace)
        harness.console.log(f"{count} mailboxes connected; initial round")
        initial = _round(stack)
        engine = get_engine(stack.settings.resolved_database_url)
        with Session(engine) as session:
            synced = session.exec(select(Mailbox).where(col(Mailbox.cursor).is_not(None))).all()
            assert len(synced) == count, f"{len(synced)} of {count} synced in the first round"
            session.exec(  # type: ignore[call-overload]
                update(Mailbox).values(last_synced_at=utcnow() - timedelta(days=1))
            )
            session.commit()
        harness.console.log("measured round")
        measured = _round(stack)
        with Session(engine) as session:
            jobs = session.exec(select(SyncJob).where(SyncJob.trigger == "schedule")).all()
            failed = [j.id for j in jobs if j.status != "completed"]
            changed = sum(sum((j.counts or {}).values()) for j in jobs[-(count // PER_WORKSPACE) :])
    assert not failed, failed
    return [
        {
            "mailboxes": count,
            "workspaces (jobs per round)": -(-count // PER_WORKSPACE),
            "initial round s": initial["wall"],
            "no-change round s (wall)": measured["wall"],
            "no-change round s (flow run)": measured["run"],
            "ms per mailbox": 1000 * measured["wall"] / count,
            "messages changed": changed,
            "failed jobs": len(failed),
        }
    ]
