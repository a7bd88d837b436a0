"""A slow receiver, for real over a socket: an attempt ends within its total bound however the
receiver trickles its answer; and that bound always fits inside a delivery's claim."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailsync.settings import Settings
from mailsync.webhooks import dispatch
from tests.support.receiver import (
    attempts_of,
    finish_job,
    in_background,
    new_endpoint,
    new_workspace,
    pending_delivery,
    running_job,
    slow_receiver,
    webhook_settings,
)
from tests.support.waiting import eventually


def test_an_attempt_ends_within_its_total_bound_however_slowly_the_receiver_drips(
    unshared_database_url: str, tmp_path: Path
) -> None:
    """A receiver that drips its response a byte every 0.1 s never trips a per-phase (read)
    timeout of 1 s; the attempt still ends within 3x its 1 s total bound, logged as timed out,
    and the delivery stays pending for its retry."""
    bound = 1.0
    settings = webhook_settings(
        unshared_database_url,
        tmp_path,
        webhook_timeout_seconds=1.0,
        webhook_attempt_seconds=bound,
        webhook_retry_base_seconds=60,
        webhook_retry_max_seconds=60,
    )
    url = settings.resolved_database_url
    with slow_receiver(drip_every=0.1) as drip:
        workspace = new_workspace(url)
        endpoint, _ = new_endpoint(settings, workspace, drip.url)
        finish_job(url, running_job(url, workspace))
        row = pending_delivery(settings, endpoint.id)
        started = time.monotonic()
        _, out = in_background(lambda: dispatch.deliver_one(row.id, settings))
        eventually(lambda: out, "the attempt's end", timeout=3 * bound)
        elapsed = time.monotonic() - started
        dripped = drip.dripped
    [outcome] = out
    assert outcome["status"] == "pending" and outcome["status_code"] is None
    assert "timed out" in outcome["error"], outcome
    assert elapsed >= bound * 0.9  # it was the bound that ended it
    assert dripped >= 3, "the receiver must have been trickling (no per-phase timeout)"
    [attempt] = attempts_of(settings, endpoint.id)
    assert attempt.status_code is None and "timed out" in (attempt.error or "")


def test_a_claim_outlasts_any_attempt(tmp_path: Path) -> None:
    """An attempt bound as long as the claim is refused at start: a claim lapsing mid-attempt
    would let a second run send the same delivery."""
    with pytest.raises(ValueError, match="ATTEMPT_SECONDS"):
        Settings(data_dir=tmp_path, webhook_attempt_seconds=60, webhook_claim_seconds=60)
    assert Settings(data_dir=tmp_path).webhook_attempt_seconds < 60


def test_a_jobs_own_run_waits_for_one_attempt_bound_not_one_per_endpoint(
    unshared_database_url: str, tmp_path: Path
) -> None:
    """The first attempts a sync run makes at its job's event (up to DELIVER_IN_RUN
    endpoints) run side by side: with every receiver hanging, the run is held about one
    attempt bound (within 3x), not one per endpoint (4x), since it holds a worker slot."""
    bound = 2.0
    settings = webhook_settings(
        unshared_database_url,
        tmp_path,
        webhook_timeout_seconds=bound,
        webhook_attempt_seconds=bound,
        webhook_retry_base_seconds=60,
        webhook_retry_max_seconds=60,
    )
    url = settings.resolved_database_url
    with slow_receiver(drip_every=None) as hang:
        workspace = new_workspace(url)
        for _ in range(dispatch.DELIVER_IN_RUN):
            new_endpoint(settings, workspace, hang.url)
        job_id = running_job(url, workspace)
        finish_job(url, job_id)
        started = time.monotonic()
        _, out = in_background(lambda: dispatch.deliver_after_job(job_id, settings))
        eventually(lambda: out, "the job's own attempts' end", timeout=3 * bound)
        elapsed = time.monotonic() - started
    [outcomes] = out
    assert len(outcomes) == dispatch.DELIVER_IN_RUN == 4
    assert all(o["status"] == "pending" and "timed out" in o["error"] for o in outcomes)
    assert hang.most_held == dispatch.DELIVER_IN_RUN and elapsed < 3 * bound
