"""Delivery lanes: a receiver that hangs holds back no other workspace's deliveries, and never
holds more attempts than its endpoint's lane allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsync.settings import Settings
from mailsync.webhooks import dispatch, lanes
from tests.support.receiver import (
    Receiver,
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


@pytest.fixture
def lanes_settings(unshared_database_url: str, tmp_path: Path) -> Settings:
    """A receiver that hangs would hold an attempt 30 s; two attempts at once in all, one per
    endpoint: the tightest shares, so a hanging endpoint's backlog could crowd out others."""
    return webhook_settings(
        unshared_database_url,
        tmp_path,
        webhook_timeout_seconds=30.0,
        webhook_attempt_seconds=30.0,
        webhook_concurrency=2,
        webhook_endpoint_concurrency=1,
        webhook_retry_base_seconds=60,
        webhook_retry_max_seconds=60,
    )


def test_a_hanging_receiver_does_not_hold_back_another_workspaces_delivery(
    lanes_settings: Settings, receiver: Receiver
) -> None:
    """Workspace A's receiver accepts and never answers, with three events due for it;
    workspace B's event, recorded while A's first attempt hangs, is delivered within 10 s
    (a third of A's 30 s attempt bound) while A's attempt is still pending, and A's endpoint
    never holds more attempts than its lane allows."""
    settings = lanes_settings
    url = settings.resolved_database_url
    with slow_receiver(drip_every=None) as hang:
        ws_a, ws_b = new_workspace(url), new_workspace(url)
        endpoint_a, _ = new_endpoint(settings, ws_a, hang.url)
        endpoint_b, receiver.secret = new_endpoint(settings, ws_b, receiver.url)
        for _ in range(3):
            finish_job(url, running_job(url, ws_a))
        round_thread, _ = in_background(lambda: dispatch.deliver_due(settings))
        eventually(lambda: hang.held, "A's first attempt reaching its receiver", timeout=10)
        finish_job(url, running_job(url, ws_b))
        eventually(lambda: receiver.accepted, "B's delivery while A's receiver hangs", timeout=10)
        still_hanging = hang.held
        a_logged = attempts_of(settings, endpoint_a.id)
    assert still_hanging >= 1 and a_logged == [], "A's attempt must still be pending"
    assert hang.most_held == settings.webhook_endpoint_concurrency
    assert pending_delivery(settings, endpoint_b.id).status == "delivered"
    # Closing A's receiver ended its attempts: the round ends well within A's bound.
    round_thread.join(3 * settings.webhook_attempt_seconds)
    assert not round_thread.is_alive()


def test_lanes_cap_attempts_per_endpoint_per_workspace_and_in_all() -> None:
    """An attempt starts only while its endpoint, its workspace and the run all have room;
    an ended attempt gives its room back, and full lanes are named so the due query can
    leave them out."""
    room = lanes.Lanes(lanes.Limits(total=3, per_endpoint=1, per_workspace=2))
    a1, a2, a3 = (lanes.Due(f"whd_a{i}", f"ep_a{i}", "ws_a") for i in (1, 2, 3))
    a1_again = lanes.Due("whd_a4", "ep_a1", "ws_a")
    b1, c1 = lanes.Due("whd_b1", "ep_b1", "ws_b"), lanes.Due("whd_c1", "ep_c1", "ws_c")
    assert room.take(a1) and not room.take(a1_again)  # the endpoint's lane is full
    assert room.take(a2) and not room.take(a3)  # the workspace's lanes are full
    assert room.full() == ({"ep_a1", "ep_a2"}, {"ws_a"})
    assert room.take(b1) and not room.take(c1)  # the run is full
    assert room.delivery_ids() == {"whd_a1", "whd_a2", "whd_b1"} and room.room() == 0
    room.release(a1)
    assert room.take(a1_again) and room.in_flight == 3
