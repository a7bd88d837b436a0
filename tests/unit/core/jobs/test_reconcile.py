"""What becomes of an open job, from what Prefect says of its flow run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailsync.core.jobs.reconcile import Bounds, RunState, Verdict, run_failure, verdict

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
BOUNDS = Bounds(without_run=timedelta(minutes=2), after_run_end=timedelta(minutes=1))


def _verdict(run: RunState | None, flow_run_id: str | None = "run-1", age: float = 600) -> Verdict:
    return verdict(
        flow_run_id=flow_run_id,
        queued_at=NOW - timedelta(seconds=age),
        run=run,
        now=NOW,
        bounds=BOUNDS,
    )


def test_a_job_without_a_run_is_given_the_submission_window_then_failed() -> None:
    """The API records a job, then creates its run: a job with neither a recorded run nor one
    named after it is left alone for `without_run`, then failed `orchestrator_unavailable`
    (the API died between the two steps; its slot would answer 409 for ever)."""
    assert _verdict(None, flow_run_id=None, age=60) == Verdict()
    failed = _verdict(None, flow_run_id=None, age=121)
    assert failed.fail is not None and failed.fail[0] == "orchestrator_unavailable"


@pytest.mark.parametrize(
    ("state", "running"), [("SCHEDULED", False), ("PENDING", False), ("RUNNING", True)]
)
def test_a_run_created_for_the_job_but_not_recorded_on_it_is_linked(
    state: str, running: bool
) -> None:
    """A run named after the job (the API died after creating it) is recorded on the job,
    which then follows it like any other."""
    assert _verdict(RunState("run-9", state), flow_run_id=None) == Verdict(
        link="run-9", running=running
    )


def test_a_run_deleted_in_prefect_loses_its_job() -> None:
    """A recorded run Prefect no longer has fails the job `job_lost` at once."""
    lost = _verdict(None)
    assert lost.fail is not None and lost.fail[0] == "job_lost" and "run-1" in lost.fail[1]


@pytest.mark.parametrize(
    ("state", "name", "code"),
    [("CRASHED", "Crashed", "job_crashed"), ("CANCELLED", "Cancelled", "job_cancelled"),
     ("FAILED", "Failed", "job_failed")],
)  # fmt: skip
def test_a_run_that_ended_badly_fails_its_job_with_its_reason(
    state: str, name: str, code: str
) -> None:
    """Crashed, cancelled and failed runs map to one job error each, with the state's name
    and message, as the API's status reads say it (one mapping)."""
    run = RunState("run-1", state, name=name, message="boom")
    assert _verdict(run).fail == (code, f"flow run {name.lower()}: boom")
    assert run_failure(run) == (code, f"flow run {name.lower()}: boom")


def test_a_run_completed_without_closing_its_job_is_lost_after_the_grace() -> None:
    """A run records its job's end before it completes; a job still open `after_run_end`
    after its run completed is failed `job_lost`, not sooner (its close may be committing)."""
    just = RunState("run-1", "COMPLETED", ended_at=NOW - timedelta(seconds=30))
    assert _verdict(just) == Verdict()
    late = RunState("run-1", "COMPLETED", ended_at=NOW - timedelta(seconds=61))
    lost = _verdict(late)
    assert lost.fail is not None and lost.fail[0] == "job_lost"


def test_a_run_under_way_keeps_its_job_open() -> None:
    """Queued, running, paused and cancelling runs leave the job as it is."""
    for state in ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"):
        assert _verdict(RunState("run-1", state)).fail is None
