"""What becomes of a job still open, given what Prefect says of its flow run (no Prefect here).

A job ends when its flow run records the end. When that never happens (the API died between
recording the job and creating its run, a run was deleted in Prefect, a run crashed and no
one asked about the job since, a run completed without recording the job's end) the job
would stay open for ever, and an open full-sync job answers 409 for its provider. The
refresh round reconciles every open job with its run (jobs.Orchestrator.reconcile) through
`verdict` below; this module decides, the orchestrator reads Prefect and writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# Prefect state types (prefect.client.schemas.objects.StateType values).
OPEN_RUN_STATES = frozenset({"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"})
RUN_FAILURES = {"CANCELLED": "job_cancelled", "CRASHED": "job_crashed", "FAILED": "job_failed"}


@dataclass(frozen=True)
class RunState:
    """A flow run as the reconciler sees it."""

    id: str
    state: str  # a Prefect StateType value
    name: str | None = None  # the state's name ("Cancelled", "Crashed", "Late", ...)
    message: str | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True)
class Bounds:
    """How long an open job is given before it is failed (README: "Jobs that never end")."""

    # Recording a job and creating its run are two steps of one API request: the run exists
    # within the request's Prefect call budget, or the request failed the job itself.
    without_run: timedelta = timedelta(minutes=2)
    # A run records its job's end before it completes; an open job this long after its run
    # completed was left behind.
    after_run_end: timedelta = timedelta(minutes=1)


@dataclass(frozen=True)
class Verdict:
    link: str | None = None  # a flow run id to record on the job (it had none)
    fail: tuple[str, str] | None = None  # (error code, message)
    running: bool = False  # the run is under way: a queued job becomes running


def run_failure(run: RunState) -> tuple[str, str] | None:
    """The job error for a run that ended without success, or None (one mapping, for the
    reconciler and the API's status reads alike)."""
    code = RUN_FAILURES.get(run.state)
    if code is None:
        return None
    message = f"flow run {(run.name or run.state).lower()}"
    return code, message + (f": {run.message}" if run.message else "")


def verdict(
    *,
    flow_run_id: str | None,
    queued_at: datetime,
    run: RunState | None,
    now: datetime,
    bounds: Bounds = Bounds(),
) -> Verdict:
    """What to do with an open job: `run` is its flow run (the one it records, or else the
    one named after it), None when Prefect has no such run."""
    link = None
    if flow_run_id is None:
        if run is None:
            if now - queued_at < bounds.without_run:
                return Verdict()
            return Verdict(
                fail=("orchestrator_unavailable", "no flow run was created for this job")
            )
        link = run.id
    elif run is None:
        return Verdict(fail=("job_lost", f"its flow run {flow_run_id} no longer exists in Prefect"))
    if run.state in OPEN_RUN_STATES:
        return Verdict(link=link, running=run.state in ("RUNNING", "CANCELLING"))
    failure = run_failure(run)
    if failure is not None:
        return Verdict(link=link, fail=failure)
    if now - (run.ended_at or now) < bounds.after_run_end:
        return Verdict(link=link)
    return Verdict(
        link=link, fail=("job_lost", "its flow run ended without recording the job's end")
    )
