"""The Prefect automation that marks a flow run Crashed once its heartbeats stop.

Why: a flow run whose machine dies (the worker and the run's process gone at once) stays
RUNNING in Prefect forever; its job reads `running` and, for a full sync, every request for
its providers gets 409 until someone marks the run Crashed. Prefect's documented answer
(docs: "Detect zombie flows") is flow-run heartbeats plus this proactive automation; once the
run is Crashed, the job reconciles to `job_crashed` and the full-sync slot is released
(mailsync/orchestration/orchestrator.py `refresh`, admission's view of non-terminal runs).

Heartbeats come every `HEARTBEAT_SECONDS` (prefect.yaml sets PREFECT_FLOWS_HEARTBEAT_FREQUENCY
for the sync flow runs; 30 s is Prefect's minimum); three missed beats make a zombie.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

NAME = "mailsync: crash zombie flow runs"
HEARTBEAT_SECONDS = 30
MISSED_BEATS = 3


def zombie_automation() -> AutomationCore:
    return AutomationCore(
        name=NAME,
        description="Marks a flow run Crashed when no heartbeat or final state follows its "
        f"last heartbeat within {HEARTBEAT_SECONDS * MISSED_BEATS} s (its machine died).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=HEARTBEAT_SECONDS * MISSED_BEATS),
        ),
        actions=[
            ChangeFlowRunState(
                name=None,
                force=False,
                state=StateType.CRASHED,
                message="no heartbeat for "
                f"{HEARTBEAT_SECONDS * MISSED_BEATS} s: the run's machine or process is gone",
            )
        ],
    )


def ensure_zombie_automation(client: SyncPrefectClient) -> str:
    """Create the automation unless one of that name exists; returns its id."""
    existing = client.read_automations_by_name(NAME)
    if existing:
        return str(existing[0].id)
    return str(client.create_automation(zombie_automation()))
